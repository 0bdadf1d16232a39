//! What the bench undoes when SIGINT or SIGTERM ends it: its CPU-capping cgroups, and in fleet
//! mode the processes it started on other hosts and their run directories. Drop handlers do not
//! run when a signal ends a process, so every such resource registers an action here for as
//! long as it lives; one thread, started with the first, waits for the signal, runs every
//! action registered then (in registration order, each bounded by what it calls), prints one
//! line and exits with 128 + the signal's number.

use std::sync::{Arc, Mutex};

type Action = Arc<dyn Fn() + Send + Sync>;

static ACTIONS: Mutex<Vec<(u64, Action)>> = Mutex::new(Vec::new());
static NEXT: Mutex<u64> = Mutex::new(0);

/// An action registered with [`register`]; dropping it unregisters the action.
#[must_use = "the action is unregistered when this is dropped"]
pub struct Registered(u64);

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registered({})", self.0)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut a) = ACTIONS.lock() {
            a.retain(|(id, _)| *id != self.0);
        }
    }
}

/// Run `action` if SIGINT or SIGTERM ends the bench while the returned value lives.
pub fn register(action: impl Fn() + Send + Sync + 'static) -> Registered {
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        use signal_hook::consts::{SIGINT, SIGTERM};
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            Ok(mut signals) => {
                std::thread::spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                        let actions: Vec<Action> = ACTIONS
                            .lock()
                            .map(|a| a.iter().map(|(_, f)| f.clone()).collect())
                            .unwrap_or_default();
                        eprintln!(
                            "ringlab-bench: interrupted by {name}: undoing what this run set up ({} item(s))",
                            actions.len()
                        );
                        for f in actions {
                            f();
                        }
                        std::process::exit(128 + sig);
                    }
                });
            }
            Err(e) => eprintln!(
                "ringlab-bench: cannot watch for SIGINT/SIGTERM ({e}): an interrupted run will not undo its set-up"
            ),
        }
    });
    let id = NEXT
        .lock()
        .map(|mut n| {
            *n += 1;
            *n
        })
        .unwrap_or(0);
    if let Ok(mut a) = ACTIONS.lock() {
        a.push((id, Arc::new(action)));
    }
    Registered(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_registration_is_gone_and_the_others_stay() {
        let n = || ACTIONS.lock().unwrap().len();
        let before = n();
        let a = register(|| {});
        let b = register(|| {});
        assert_eq!(n(), before + 2);
        drop(a);
        assert_eq!(n(), before + 1);
        drop(b);
        assert_eq!(n(), before);
    }
}
