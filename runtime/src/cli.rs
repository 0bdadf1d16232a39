//! What every program prints about itself: a shell completion script (`completions SHELL`) and
//! its man page (`man`), both generated from its clap command so they never drift from
//! `--help`.
//!
//! `ringlab-server` and `ringlab-client` have no subcommands (the client takes a positional
//! address), so they call [`intercept`] before parsing: it handles `completions`/`man` as the
//! first argument and leaves every other command line to clap unchanged. `ringlab-bench` has
//! subcommands of its own and calls [`completions`] and [`man`] from them.
//!
//! Usage errors (no shell, an unknown shell, an extra argument) are one line on stderr and exit
//! code 2, as clap's are.

use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Command, ValueEnum};
use clap_complete::Shell;

/// Handle `completions SHELL` or `man` as the first argument of this process, printing to
/// stdout; `None` when the first argument is anything else (the caller then parses as usual).
/// `command` is only built when needed.
pub fn intercept(command: impl FnOnce() -> Command) -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let stdout = io::stdout();
    let stderr = io::stderr();
    intercept_args(&args, command, &mut stdout.lock(), &mut stderr.lock())
}

/// [`intercept`] over given arguments (without the program name) and outputs.
pub fn intercept_args(
    args: &[OsString],
    command: impl FnOnce() -> Command,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Option<ExitCode> {
    let first = args.first()?.to_str()?;
    if first != "completions" && first != "man" {
        return None;
    }
    let cmd = command();
    let name = cmd.get_name().to_string();
    let rest: Vec<String> = args[1..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let usage = |err: &mut dyn Write, line: String| {
        let _ = writeln!(err, "{name}: {line}");
        ExitCode::from(2)
    };
    Some(match rest.as_slice() {
        [h] if h == "-h" || h == "--help" => {
            let _ = writeln!(out, "{}", usage_line(&name, first));
            ExitCode::SUCCESS
        }
        [] if first == "man" => man_to(cmd, out, err),
        [extra, ..] if first == "man" => {
            usage(err, format!("man takes no arguments (got {extra:?})"))
        }
        [shell] => completions_to(cmd, shell, out, err),
        [] => usage(
            err,
            format!("completions needs a shell: {}", usage_line(&name, first)),
        ),
        [_, extra, ..] => usage(
            err,
            format!(
                "completions takes one shell, not also {extra:?}: {}",
                usage_line(&name, first)
            ),
        ),
    })
}

/// `NAME completions SHELLS` / `NAME man`.
fn usage_line(name: &str, what: &str) -> String {
    if what == "man" {
        format!(
            "usage: {name} man (the roff man page on stdout; read it with `{name} man | man -l -`)"
        )
    } else {
        format!("usage: {name} completions {}", shell_names().join("|"))
    }
}

/// The shells `completions` takes, as typed.
pub fn shell_names() -> Vec<String> {
    Shell::value_variants()
        .iter()
        .filter_map(|s| s.to_possible_value())
        .map(|v| v.get_name().to_string())
        .collect()
}

/// The shell called `name`, or one line saying which names there are.
pub fn parse_shell(name: &str) -> Result<Shell, String> {
    Shell::from_str(name, false).map_err(|_| {
        format!(
            "unknown shell {name:?} for completions: choose one of {}",
            shell_names().join(", ")
        )
    })
}

/// Print `cmd`'s completion script for the shell called `shell` to stdout (exit 0), or one line
/// on stderr (exit 2 for an unknown shell, 1 when stdout cannot be written).
pub fn completions(cmd: Command, shell: &str) -> ExitCode {
    completions_to(
        cmd,
        shell,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    )
}

/// Print `cmd`'s man page (roff) to stdout (exit 0), or one line on stderr (exit 1).
pub fn man(cmd: Command) -> ExitCode {
    man_to(cmd, &mut io::stdout().lock(), &mut io::stderr().lock())
}

fn completions_to(
    mut cmd: Command,
    shell: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let name = cmd.get_name().to_string();
    let shell = match parse_shell(shell) {
        Ok(s) => s,
        Err(line) => {
            let _ = writeln!(err, "{name}: {line}");
            return ExitCode::from(2);
        }
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, name.clone(), &mut buf);
    if shell == Shell::Bash {
        let script = String::from_utf8_lossy(&buf);
        buf = respell_bash_subcommand_arms(&script, &name).into_bytes();
    }
    write_out(&name, &buf, out, err)
}

/// Work around a clap_complete bug (4.6.12; clap-rs/clap#6421): for a program whose name has a
/// hyphen, the bash script's loop names the state after a subcommand `ringlab__bench__subcmd__X`
/// but its case arms spell it `ringlab__subcmd__bench__subcmd__X` and count the hyphen as one
/// more level, so nothing completes after a subcommand (`ringlab-bench compare --bud<TAB>`).
/// Respell those arms (and their level) as the loop spells them. A script without such arms
/// (no hyphen, no subcommands, or a fixed generator) comes back unchanged.
fn respell_bash_subcommand_arms(script: &str, name: &str) -> String {
    let hyphens = name.matches('-').count();
    if hyphens == 0 {
        return script.to_string();
    }
    let wrong = format!("{}__subcmd__", name.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", name.replace('-', "__"));
    let mut out = String::with_capacity(script.len());
    // After a respelled arm's label: its level test (`${COMP_CWORD} -eq N`) is the next one.
    let mut level_due = false;
    for line in script.split_inclusive('\n') {
        let body = line.trim();
        if body.starts_with(&wrong) && body.ends_with(')') {
            out.push_str(&line.replacen(&wrong, &right, 1));
            level_due = true;
            continue;
        }
        const LEVEL: &str = "${COMP_CWORD} -eq ";
        if let Some(at) = line.find(LEVEL).filter(|_| level_due) {
            level_due = false;
            let from = at + LEVEL.len();
            let digits = line[from..].bytes().take_while(u8::is_ascii_digit).count();
            if let Ok(n) = line[from..from + digits].parse::<usize>() {
                out.push_str(&line[..from]);
                out.push_str(&n.saturating_sub(hyphens).to_string());
                out.push_str(&line[from + digits..]);
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

fn man_to(cmd: Command, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let name = cmd.get_name().to_string();
    let mut buf = Vec::new();
    if let Err(e) = clap_mangen::Man::new(cmd).render(&mut buf) {
        let _ = writeln!(err, "{name}: cannot render the man page: {e}");
        return ExitCode::from(1);
    }
    // The roff writer leaves the last line open; a text file ends with a newline.
    if !buf.ends_with(b"\n") {
        buf.push(b'\n');
    }
    write_out(&name, &buf, out, err)
}

/// Write the whole of `buf`; a reader that went away (`| head`) ends it quietly, with exit 1
/// as the text was not all delivered.
fn write_out(name: &str, buf: &[u8], out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    match out.write_all(buf).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::from(1),
        Err(e) => {
            let _ = writeln!(err, "{name}: cannot write to stdout: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn toy() -> Command {
        Command::new("toy")
            .version("1.2.3")
            .about("A toy program.")
            .arg(
                Arg::new("speed")
                    .long("speed")
                    .help("How fast.")
                    .action(ArgAction::Set),
            )
            .arg(
                Arg::new("secret")
                    .long("secret")
                    .hide(true)
                    .action(ArgAction::SetTrue),
            )
    }

    /// Run [`intercept_args`] on `args`: (exit code, stdout, stderr), or `None` if not handled.
    fn run(args: &[&str]) -> Option<(ExitCode, String, String)> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = intercept_args(&args, toy, &mut out, &mut err)?;
        Some((
            code,
            String::from_utf8(out).expect("utf-8"),
            String::from_utf8(err).expect("utf-8"),
        ))
    }

    #[test]
    fn other_command_lines_are_left_to_clap() {
        for args in [
            &[][..],
            &["--speed", "3"],
            &["127.0.0.1:80"],
            &["mann"],
            &["--man"],
        ] {
            assert!(run(args).is_none(), "{args:?} was intercepted");
        }
    }

    #[test]
    fn completions_for_every_shell_name_the_program() {
        for shell in shell_names() {
            let (code, out, err) = run(&["completions", &shell]).expect("handled");
            assert_eq!(code, ExitCode::SUCCESS, "{shell}: {err}");
            assert!(err.is_empty(), "{shell}: {err}");
            assert!(
                out.contains("toy") && out.contains("speed"),
                "{shell}:\n{out}"
            );
            // clap_complete's generators offer hidden flags too (by design), so no check here.
        }
        assert!(["bash", "zsh", "fish"]
            .iter()
            .all(|s| shell_names().contains(&s.to_string())));
    }

    /// The bash script of a hyphenated program with a subcommand completes that subcommand's
    /// flags: [`respell_bash_subcommand_arms`] makes the arms match the loop's state.
    #[test]
    fn bash_arms_of_a_hyphenated_program_match_its_state() {
        let cmd = Command::new("my-tool").subcommand(
            Command::new("build").arg(Arg::new("target").long("target").action(ArgAction::Set)),
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            completions_to(cmd, "bash", &mut out, &mut err),
            ExitCode::SUCCESS
        );
        let script = String::from_utf8(out).expect("utf-8");
        assert!(!script.contains("my__subcmd__tool"), "{script}");
        // Each state the loop assigns has an arm of the same spelling.
        for state in script
            .lines()
            .filter_map(|l| l.trim().strip_prefix("cmd=\""))
        {
            let state = state.trim_end_matches('"');
            if !state.is_empty() {
                assert!(
                    script.contains(&format!("\n        {state})\n")),
                    "no arm {state}"
                );
            }
        }
        let arm = script
            .split("\n        my__tool__subcmd__build)\n")
            .nth(1)
            .expect("the build arm");
        assert!(arm.contains("${COMP_CWORD} -eq 2 ]]"), "{arm}");
        // An unhyphenated name or a script already right passes through unchanged.
        let plain =
            "    case x in\n        tool__subcmd__build)\n            ${COMP_CWORD} -eq 2\n";
        assert_eq!(respell_bash_subcommand_arms(plain, "tool"), plain);
        let right = plain.replace("tool__", "my__tool__");
        assert_eq!(respell_bash_subcommand_arms(&right, "my-tool"), right);
    }

    #[test]
    fn man_page_is_roff_with_the_flags() {
        let (code, out, err) = run(&["man"]).expect("handled");
        assert_eq!(code, ExitCode::SUCCESS, "{err}");
        // After the writer's two-line string definition (`.ie`/`.el`), the title comes first.
        let first = out
            .lines()
            .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "));
        assert!(first.is_some_and(|l| l.starts_with(".TH toy 1 ")), "{out}");
        assert!(out.contains("speed") && out.contains("1.2.3"), "{out}");
        assert!(!out.contains("secret"), "{out}");
        assert!(out.ends_with(".SH VERSION\nv1.2.3\n"), "{out}");
    }

    #[test]
    fn usage_errors_are_one_line_and_exit_2() {
        for (args, says) in [
            (&["completions", "tcsh"][..], "unknown shell \"tcsh\""),
            (&["completions"], "completions needs a shell"),
            (&["completions", "bash", "zsh"], "one shell"),
            (&["man", "x"], "man takes no arguments"),
        ] {
            let (code, out, err) = run(args).expect("handled");
            assert_eq!(code, ExitCode::from(2), "{args:?}");
            assert!(out.is_empty(), "{args:?}: {out}");
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
            assert!(
                err.starts_with("toy: ") && err.contains(says),
                "{args:?}: {err}"
            );
        }
    }

    #[test]
    fn help_after_the_word_prints_usage() {
        let (code, out, _) = run(&["completions", "--help"]).expect("handled");
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(out.starts_with("usage: toy completions bash|"), "{out}");
        let (code, out, _) = run(&["man", "-h"]).expect("handled");
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(out.starts_with("usage: toy man"), "{out}");
    }

    #[test]
    fn a_closed_stdout_is_exit_1_without_noise() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut err = Vec::new();
        let code = man_to(toy(), &mut Closed, &mut err);
        assert_eq!(code, ExitCode::from(1));
        assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
    }
}
