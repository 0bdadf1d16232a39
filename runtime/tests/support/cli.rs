//! What the completion and man-page tests of ringlab-server, ringlab-client and ringlab-bench
//! share (`ringlab_runtime::cli` makes both for all three): included by each crate's
//! tests/completions.rs with `#[path]`, so it runs against that crate's own binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One of the binaries: its path (`env!("CARGO_BIN_EXE_...")`) and name.
pub struct Cli {
    pub bin: &'static str,
    pub name: &'static str,
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("utf-8")
}

impl Cli {
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(self.bin)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin))
    }

    /// `NAME completions SHELL`, checked for exit 0 and a silent stderr, saved to a file.
    pub fn script(&self, shell: &str) -> (String, PathBuf) {
        let out = self.run(&["completions", shell]);
        assert!(out.status.success(), "completions {shell}: {out:?}");
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        let body = text(&out.stdout);
        assert!(body.contains(self.name), "{shell}:\n{body}");
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{}-{}.{shell}",
            self.name,
            std::process::id()
        ));
        std::fs::write(&path, &body).expect("write the script");
        (body, path)
    }

    /// Source the bash script, check it registers a completion function for the binary, and
    /// return what that function offers for the command line `words` (the last word is
    /// completed).
    pub fn bash_complete(&self, file: &Path, words: &[&str]) -> Vec<String> {
        let words_q: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let program = format!(
            r#"source '{file}' || exit 10
spec=$(complete -p {name}) || exit 11
fn=$(sed -n 's/.*-F \([^ ]*\) .*/\1/p' <<<"$spec")
[ "$(type -t "$fn")" = function ] || exit 12
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
"$fn" {name} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
            file = file.display(),
            name = self.name,
            words = words_q.join(" ")
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &program])
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "bash: {out:?}");
        text(&out.stdout).lines().map(str::to_string).collect()
    }

    /// The zsh and fish scripts name the binary and `word`, and parse where the shell is
    /// installed (the shells are optional here).
    pub fn zsh_and_fish_parse(&self, word: &str) {
        for (shell, check) in [("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])] {
            let (body, file) = self.script(shell);
            assert!(body.contains(word), "{shell}:\n{body}");
            match Command::new(check[0]).arg(check[1]).arg(&file).output() {
                Ok(out) => assert!(out.status.success(), "{shell} -n: {out:?}"),
                Err(e) => {
                    println!("skipped: parsing the {shell} script: {shell} not runnable ({e})")
                }
            }
        }
    }

    /// What fish offers for the command line `line` with the fish script loaded; none where
    /// fish is not installed.
    pub fn fish_complete(&self, line: &str) -> Option<Vec<String>> {
        let (_, file) = self.script("fish");
        let program = format!(
            "source '{}'; complete --do-complete '{line}'",
            file.display()
        );
        let out = match Command::new("fish")
            .args(["--no-config", "-c", &program])
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                println!("skipped: fish not runnable ({e})");
                return None;
            }
        };
        assert!(out.status.success(), "{out:?}");
        Some(
            text(&out.stdout)
                .lines()
                .map(|l| l.split('\t').next().unwrap_or("").to_string())
                .collect(),
        )
    }

    /// `NAME man`: roff starting with `.TH NAME 1`, naming each of `flags`, rendered by man(1)
    /// without a warning where man-db is installed. Returns the page.
    pub fn man_page(&self, flags: &[&str]) -> String {
        let out = self.run(&["man"]);
        assert!(out.status.success(), "{out:?}");
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        let page = text(&out.stdout);
        // clap_mangen's writer starts with a two-line string definition (`.ie`/`.el`), then .TH.
        let first = page
            .lines()
            .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "));
        assert!(
            first.is_some_and(|l| l.starts_with(&format!(".TH {} 1 ", self.name))),
            "{first:?}"
        );
        for flag in flags {
            let roff = format!("\\fB\\-\\-{}\\fR", flag.replace('-', "\\-"));
            assert!(page.contains(&roff), "no --{flag} in the man page");
        }
        let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{}-{}.1",
            self.name,
            std::process::id()
        ));
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
                let want = format!("--{}", flags[0]);
                assert!(
                    text(&o.stdout).contains(&want),
                    "rendered page lacks {want}"
                );
            }
            Err(e) => println!("skipped: rendering with man: not runnable ({e})"),
        }
        page
    }

    /// Each of `cases` (arguments, what the one line says) exits 2 with one line on stderr,
    /// `NAME: ...`, and nothing on stdout.
    pub fn usage_errors(&self, cases: &[(&[&str], &str)]) {
        for (args, says) in cases {
            let out = self.run(args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
            let err = text(&out.stderr);
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
            assert!(
                err.starts_with(&format!("{}: ", self.name)) && err.contains(says),
                "{args:?}: {err}"
            );
        }
    }
}
