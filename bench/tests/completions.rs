//! `ringlab-bench completions SHELL` and `ringlab-bench man` (subcommands): the scripts load in
//! their shells and complete real subcommands and flags, the man page is roff naming real flags
//! and subcommands, a bad shell is one line and exit 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ringlab-bench");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("utf-8")
}

/// `ringlab-bench completions SHELL`, checked for exit 0 and a silent stderr, saved to a file.
fn script(shell: &str) -> (String, PathBuf) {
    let out = run(&["completions", shell]);
    assert!(out.status.success(), "completions {shell}: {out:?}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let body = text(&out.stdout);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ringlab-bench-{}.{shell}", std::process::id()));
    std::fs::write(&path, &body).expect("write the script");
    (body, path)
}

/// Source the bash script, check it registers a completion function for `ringlab-bench`, and
/// return what that function offers for the command line `words` (the last word is completed).
fn bash_complete(file: &Path, words: &[&str]) -> Vec<String> {
    let words_q: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        r#"source '{file}' || exit 10
spec=$(complete -p ringlab-bench) || exit 11
fn=$(sed -n 's/.*-F \([^ ]*\) .*/\1/p' <<<"$spec")
[ "$(type -t "$fn")" = function ] || exit 12
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
"$fn" ringlab-bench "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        file = file.display(),
        words = words_q.join(" ")
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "bash: {out:?}");
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn bash_completion_registers_and_completes_flags_and_values() {
    let (body, file) = script("bash");
    assert!(body.contains("ringlab-bench"), "{body}");
    let subs = bash_complete(&file, &["ringlab-bench", "com"]);
    assert_eq!(subs, ["compare", "completions"]);
    let subs = bash_complete(&file, &["ringlab-bench", "peers", "b"]);
    assert_eq!(subs, ["build"]);
    let flags = bash_complete(&file, &["ringlab-bench", "--bud"]);
    assert_eq!(flags, ["--budget"]);
    // After a subcommand too (clap_complete gets this wrong for hyphenated names by itself:
    // ringlab_runtime::cli respells the script).
    let flags = bash_complete(&file, &["ringlab-bench", "compare", "--bud"]);
    assert_eq!(flags, ["--budget"]);
    let flags = bash_complete(&file, &["ringlab-bench", "peers", "build", "--w"]);
    assert_eq!(flags, ["--with"]);
}

#[test]
fn zsh_and_fish_scripts_name_the_binary_and_parse() {
    for (shell, check) in [("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])] {
        let (body, file) = script(shell);
        assert!(
            body.contains("ringlab-bench") && body.contains("io"),
            "{shell}:\n{body}"
        );
        // The shells themselves are optional here: parse the script where one is installed.
        match Command::new(check[0]).arg(check[1]).arg(&file).output() {
            Ok(out) => assert!(out.status.success(), "{shell} -n: {out:?}"),
            Err(e) => println!("skipped: parsing the {shell} script: {shell} not runnable ({e})"),
        }
    }
}

#[test]
fn fish_completes_subcommands_where_fish_exists() {
    let (_, file) = script("fish");
    let program = format!(
        "source '{}'; complete --do-complete 'ringlab-bench '",
        file.display()
    );
    let out = match Command::new("fish")
        .args(["--no-config", "-c", &program])
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            println!("skipped: fish not runnable ({e})");
            return;
        }
    };
    assert!(out.status.success(), "{out:?}");
    let offered: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect();
    for sub in ["compare", "doctor", "completions", "man"] {
        assert!(offered.iter().any(|w| w == sub), "{offered:?}");
    }
}

#[test]
fn man_page_is_roff_with_real_flags() {
    let out = run(&["man"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    // clap_mangen's writer starts with a two-line string definition (`.ie`/`.el`), then .TH.
    let first = page
        .lines()
        .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "));
    assert!(
        first.is_some_and(|l| l.starts_with(".TH ringlab-bench 1 ")),
        "{first:?}"
    );
    for flag in [
        "budget",
        "backends",
        "quick",
        "server-cores",
        "peer",
        "profile",
    ] {
        let roff = format!("\\fB\\-\\-{}\\fR", flag.replace('-', "\\-"));
        assert!(page.contains(&roff), "no --{flag} in the man page");
    }
    // The subcommands are listed (the internal `hold` is not).
    for sub in ["compare", "doctor", "completions", "man"] {
        assert!(
            page.contains(&format!("ringlab\\-bench\\-{sub}(1)")),
            "no {sub} in the page"
        );
    }
    assert!(!page.contains("ringlab\\-bench\\-hold"), "hold is internal");
    assert!(page.contains("A/A"), "the long description is there");
    // man(1) renders it without a warning, where man-db is installed.
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ringlab-bench-{}.1", std::process::id()));
    std::fs::write(&file, &page).expect("write the page");
    match Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&file)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .output()
    {
        Ok(o) => {
            assert!(o.status.success(), "man -l: {o:?}");
            assert!(o.stderr.is_empty(), "man -l warns: {}", text(&o.stderr));
            assert!(
                text(&o.stdout).contains("--budget"),
                "rendered page lacks --budget"
            );
        }
        Err(e) => println!("skipped: rendering with man: not runnable ({e})"),
    }
}

#[test]
fn an_unknown_shell_is_one_line_and_exit_2() {
    let out = run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ringlab-bench: unknown shell \"tcsh\"") && err.contains("bash"),
        "{err}"
    );
}

#[test]
fn help_lists_both_subcommands() {
    let out = run(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = text(&out.stdout);
    let listed = |sub: &str| {
        help.lines()
            .any(|l| l.trim_start().starts_with(&format!("{sub} ")))
    };
    assert!(listed("completions") && listed("man"), "{help}");
}
