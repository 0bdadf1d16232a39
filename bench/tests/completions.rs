//! `ringlab-bench completions SHELL` and `ringlab-bench man` (subcommands): the scripts load in
//! their shells and complete real subcommands and flags, the man page is roff naming real flags
//! and subcommands, a bad shell is one line and exit 2.

#[path = "../../runtime/tests/support/cli.rs"]
mod cli;

use cli::{text, Cli};

const CLI: Cli = Cli {
    bin: env!("CARGO_BIN_EXE_ringlab-bench"),
    name: "ringlab-bench",
};

#[test]
fn bash_completion_registers_and_completes_flags_and_values() {
    let (_, file) = CLI.script("bash");
    let subs = CLI.bash_complete(&file, &["ringlab-bench", "com"]);
    assert_eq!(subs, ["compare", "completions"]);
    let subs = CLI.bash_complete(&file, &["ringlab-bench", "peers", "b"]);
    assert_eq!(subs, ["build"]);
    let flags = CLI.bash_complete(&file, &["ringlab-bench", "--bud"]);
    assert_eq!(flags, ["--budget"]);
    // After a subcommand too (clap_complete gets this wrong for hyphenated names by itself:
    // ringlab_runtime::cli respells the script).
    let flags = CLI.bash_complete(&file, &["ringlab-bench", "compare", "--bud"]);
    assert_eq!(flags, ["--budget"]);
    let flags = CLI.bash_complete(&file, &["ringlab-bench", "peers", "build", "--w"]);
    assert_eq!(flags, ["--with"]);
}

#[test]
fn zsh_and_fish_scripts_name_the_binary_and_parse() {
    CLI.zsh_and_fish_parse("budget");
}

#[test]
fn fish_completes_subcommands_where_fish_exists() {
    if let Some(offered) = CLI.fish_complete("ringlab-bench ") {
        for sub in ["compare", "doctor", "completions", "man"] {
            assert!(offered.iter().any(|w| w == sub), "{offered:?}");
        }
    }
}

#[test]
fn man_page_is_roff_with_real_flags() {
    let page = CLI.man_page(&[
        "budget",
        "backends",
        "quick",
        "server-cores",
        "peer",
        "profile",
    ]);
    // The subcommands are listed (the internal `hold` is not).
    for sub in ["compare", "doctor", "completions", "man"] {
        assert!(
            page.contains(&format!("ringlab\\-bench\\-{sub}(1)")),
            "no {sub} in the page"
        );
    }
    assert!(!page.contains("ringlab\\-bench\\-hold"), "hold is internal");
    assert!(page.contains("A/A"), "the long description is there");
}

#[test]
fn an_unknown_shell_is_one_line_and_exit_2() {
    CLI.usage_errors(&[(&["completions", "tcsh"], "unknown shell \"tcsh\"")]);
}

#[test]
fn help_lists_both_subcommands() {
    let out = CLI.run(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = text(&out.stdout);
    let listed = |sub: &str| {
        help.lines()
            .any(|l| l.trim_start().starts_with(&format!("{sub} ")))
    };
    assert!(listed("completions") && listed("man"), "{help}");
}
