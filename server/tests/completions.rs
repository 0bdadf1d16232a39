//! `ringlab-server completions SHELL` and `ringlab-server man`: the scripts load in their shells
//! and complete real flags and values, the man page is roff naming real flags, a bad shell is one
//! line and exit 2, and the ordinary command line is untouched.

#[path = "../../runtime/tests/support/cli.rs"]
mod cli;

use cli::{text, Cli};

const CLI: Cli = Cli {
    bin: env!("CARGO_BIN_EXE_ringlab-server"),
    name: "ringlab-server",
};

#[test]
fn bash_completion_registers_and_completes_flags_and_values() {
    let (_, file) = CLI.script("bash");
    let io = CLI.bash_complete(&file, &["ringlab-server", "--io", ""]);
    for backend in [
        "uring",
        "epoll",
        "tokio-uring",
        "tokio",
        "blocking",
        "poll",
        "select",
    ] {
        assert!(io.iter().any(|w| w == backend), "--io offers {io:?}");
    }
    let flags = CLI.bash_complete(&file, &["ringlab-server", "--pro"]);
    assert!(
        flags.contains(&"--proto".to_string()) && flags.contains(&"--processes".to_string()),
        "--pro offers {flags:?}"
    );
    let proto = CLI.bash_complete(&file, &["ringlab-server", "--proto", "h"]);
    assert_eq!(proto, ["http"]);
}

#[test]
fn zsh_and_fish_scripts_name_the_binary_and_parse() {
    CLI.zsh_and_fish_parse("io");
}

#[test]
fn fish_completes_backend_names_where_fish_exists() {
    if let Some(offered) = CLI.fish_complete("ringlab-server --io ") {
        for backend in ["uring", "epoll", "tokio-uring"] {
            assert!(offered.iter().any(|w| w == backend), "{offered:?}");
        }
    }
}

#[test]
fn man_page_is_roff_with_real_flags() {
    let page = CLI.man_page(&["io", "listen", "cores", "grace", "max-conns", "sq-entries"]);
    // Hidden internal flags stay out of the page.
    assert!(!page.contains("worker\\-of"), "--worker-of is internal");
    assert!(page.contains("SIGTERM"), "the long description is there");
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
        help.contains("ringlab-server completions bash") && help.contains("ringlab-server man"),
        "{help}"
    );
    // The words are only taken as the first argument: elsewhere clap sees them as before.
    let out = CLI.run(&["--io", "man"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("invalid value 'man'"), "{out:?}");
    let out = CLI.run(&["--version"]);
    assert!(out.status.success() && text(&out.stdout).starts_with("ringlab-server "));
}
