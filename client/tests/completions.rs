//! `ringlab-client completions SHELL` and `ringlab-client man`: the scripts load in their shells
//! and complete real flags and values, the man page is roff naming real flags, a bad shell is one
//! line and exit 2, and the ordinary command line is untouched.

#[path = "../../runtime/tests/support/cli.rs"]
mod cli;

use cli::{text, Cli};

const CLI: Cli = Cli {
    bin: env!("CARGO_BIN_EXE_ringlab-client"),
    name: "ringlab-client",
};

#[test]
fn bash_completion_registers_and_completes_flags_and_values() {
    let (_, file) = CLI.script("bash");
    let proto = CLI.bash_complete(&file, &["ringlab-client", "127.0.0.1:9527", "--proto", ""]);
    assert_eq!(proto, ["echo", "http"]);
    let io = CLI.bash_complete(&file, &["ringlab-client", "--io", ""]);
    assert_eq!(io, ["uring", "epoll"]);
    let flags = CLI.bash_complete(&file, &["ringlab-client", "--con"]);
    assert!(
        flags.contains(&"--conns".to_string()) && flags.contains(&"--connect-rate".to_string()),
        "--con offers {flags:?}"
    );
}

#[test]
fn zsh_and_fish_scripts_name_the_binary_and_parse() {
    CLI.zsh_and_fish_parse("conns");
}

#[test]
fn fish_completes_io_names_where_fish_exists() {
    if let Some(offered) = CLI.fish_complete("ringlab-client --io ") {
        for io in ["uring", "epoll"] {
            assert!(offered.iter().any(|w| w == io), "{offered:?}");
        }
    }
}

#[test]
fn man_page_is_roff_with_real_flags() {
    let page = CLI.man_page(&["conns", "rate", "duration", "proto", "pipeline", "hist-log"]);
    // Hidden internal flags stay out of the page.
    assert!(!page.contains("worker\\-of"), "--worker-of is internal");
    assert!(page.contains("ADDR"), "the positional address is there");
    assert!(
        page.contains("coordinated omission"),
        "the long description is there"
    );
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    CLI.usage_errors(&[
        (&["completions", "tcsh"], "unknown shell \"tcsh\""),
        (&["completions"], "completions needs a shell"),
        (&["completions", "bash", "zsh"], "one shell"),
        (&["man", "--io"], "man takes no arguments"),
    ]);
}

#[test]
fn help_mentions_both_and_flags_still_parse() {
    let out = CLI.run(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = text(&out.stdout);
    assert!(
        help.contains("ringlab-client completions bash") && help.contains("ringlab-client man"),
        "{help}"
    );
    // The words are only taken as the first argument: after the address, clap sees them as
    // before (an unexpected argument).
    let out = CLI.run(&["127.0.0.1:9", "man"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("unexpected argument 'man'"),
        "{out:?}"
    );
    let out = CLI.run(&["--version"]);
    assert!(out.status.success() && text(&out.stdout).starts_with("ringlab-client "));
}
