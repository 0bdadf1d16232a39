//! CPU lists (`0`, `0-3`, `0,2,4`, `all`) and pinning threads to them.

use std::fmt;
use std::str::FromStr;

/// Errors from parsing or applying a CPU list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuError {
    /// The list does not parse.
    #[error("bad CPU list {list:?}: {why} (expected e.g. `0`, `0-3`, `0,2,4` or `all`)")]
    Syntax { list: String, why: &'static str },
    /// A listed CPU is not one this process may run on.
    #[error("CPU {cpu} is not available to this process (available: {available})")]
    Unavailable { cpu: usize, available: CpuList },
    /// Pinning failed or did not take.
    #[error("could not pin thread to CPU {cpu}: {why}")]
    Pin { cpu: usize, why: String },
}

/// An ordered list of distinct CPU ids.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CpuList(Vec<usize>);

/// A CPU list as given on the command line, resolved against the machine by [`CpuSpec::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuSpec {
    /// Every CPU this process may run on.
    All,
    /// These CPUs, in this order.
    List(CpuList),
}

impl CpuList {
    /// The CPU ids.
    pub fn ids(&self) -> &[usize] {
        &self.0
    }
    /// How many CPUs.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Each of `parts` processes' share: contiguous, nearly equal shares when there are at
    /// least as many CPUs as parts; otherwise one CPU each, round-robin (parts share CPUs).
    pub fn shares(&self, parts: usize) -> Vec<CpuList> {
        let ids = &self.0;
        let n = parts.max(1);
        if ids.is_empty() {
            return vec![CpuList::default(); n];
        }
        if n > ids.len() {
            return (0..n).map(|i| CpuList(vec![ids[i % ids.len()]])).collect();
        }
        let mut next = 0;
        even_shares(ids.len(), n)
            .into_iter()
            .map(|len| {
                next += len;
                CpuList(ids[next - len..next].to_vec())
            })
            .collect()
    }

    /// A list from ids (duplicates removed, order kept).
    pub fn from_ids(ids: impl IntoIterator<Item = usize>) -> Self {
        let mut v = Vec::new();
        for id in ids {
            if !v.contains(&id) {
                v.push(id);
            }
        }
        CpuList(v)
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: Vec<String> = self.0.iter().map(|c| c.to_string()).collect();
        f.write_str(&s.join(","))
    }
}

impl FromStr for CpuSpec {
    type Err = CpuError;
    fn from_str(s: &str) -> Result<Self, CpuError> {
        let err = |why| CpuError::Syntax {
            list: s.to_string(),
            why,
        };
        let t = s.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(CpuSpec::All);
        }
        if t.is_empty() {
            return Err(err("empty"));
        }
        let mut ids = Vec::new();
        for part in t.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty item"));
            }
            let parse = |x: &str| x.trim().parse::<usize>().map_err(|_| err("not a number"));
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse(a)?, parse(b)?);
                    if a > b {
                        return Err(err("range runs backwards"));
                    }
                    if b - a >= 4096 {
                        return Err(err("range too large"));
                    }
                    ids.extend(a..=b);
                }
                None => ids.push(parse(part)?),
            }
        }
        let list = CpuList::from_ids(ids);
        if list.len() != t.split(',').map(count_items).sum::<usize>() {
            return Err(err("a CPU is listed twice"));
        }
        Ok(CpuSpec::List(list))
    }
}

fn count_items(part: &str) -> usize {
    match part.split_once('-') {
        Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
            (Ok(a), Ok(b)) if b >= a => b - a + 1,
            _ => 0,
        },
        None => 1,
    }
}

impl CpuSpec {
    /// Check the list against the CPUs this process may run on.
    pub fn resolve(&self) -> Result<CpuList, CpuError> {
        let available = available_cpus();
        match self {
            CpuSpec::All => Ok(available),
            CpuSpec::List(list) => {
                for &cpu in list.ids() {
                    if !available.ids().contains(&cpu) {
                        return Err(CpuError::Unavailable {
                            cpu,
                            available: available.clone(),
                        });
                    }
                }
                Ok(list.clone())
            }
        }
    }
}

/// Split `n` into `parts` nearly equal shares, the first ones larger (`10` in 4: 3, 3, 2, 2):
/// connections, requests or CPUs among loops or processes.
pub fn even_shares(n: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| n / parts + usize::from(i < n % parts))
        .collect()
}

/// The CPUs this process may run on (its affinity mask at start).
pub fn available_cpus() -> CpuList {
    match core_affinity::get_core_ids() {
        Some(ids) => CpuList::from_ids(ids.into_iter().map(|c| c.id)),
        None => CpuList::from_ids(0..std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// Pin the calling thread to `cpu` and check, by reading the affinity back, that it took.
pub fn pin_current_thread(cpu: usize) -> Result<(), CpuError> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        return Err(CpuError::Pin {
            cpu,
            why: "sched_setaffinity refused".into(),
        });
    }
    let got = current_thread_cpus().map_err(|e| CpuError::Pin {
        cpu,
        why: format!("sched_getaffinity: {e}"),
    })?;
    if got.ids() != [cpu] {
        return Err(CpuError::Pin {
            cpu,
            why: format!("affinity reads back as {got}"),
        });
    }
    Ok(())
}

/// The calling thread's affinity mask.
pub fn current_thread_cpus() -> std::io::Result<CpuList> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok(CpuList::from_ids(
        (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<usize> {
        match s.parse::<CpuSpec>().unwrap() {
            CpuSpec::List(l) => l.ids().to_vec(),
            CpuSpec::All => panic!("all"),
        }
    }

    #[test]
    fn parses_lists() {
        assert_eq!(list("0"), vec![0]);
        assert_eq!(list("0-3"), vec![0, 1, 2, 3]);
        assert_eq!(list("0,2,4"), vec![0, 2, 4]);
        assert_eq!(list("1, 3-4"), vec![1, 3, 4]);
        assert_eq!("ALL".parse::<CpuSpec>().unwrap(), CpuSpec::All);
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in [
            "", "a", "1-", "-1", "3-1", "0,,1", "0,0", "0-2,1", "1-999999",
        ] {
            assert!(bad.parse::<CpuSpec>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn even_shares_add_up() {
        assert_eq!(even_shares(10, 4), [3, 3, 2, 2]);
        assert_eq!(even_shares(2, 3), [1, 1, 0]);
        assert_eq!(even_shares(0, 2), [0, 0]);
        assert!(even_shares(5, 0).is_empty());
        for (n, parts) in [(103, 4), (7, 7), (1, 5), (1000, 3)] {
            assert_eq!(even_shares(n, parts).iter().sum::<usize>(), n);
        }
    }

    #[test]
    fn resolve_rejects_missing_cpu() {
        let spec: CpuSpec = "4000".parse().unwrap();
        let e = spec.resolve().unwrap_err();
        assert!(matches!(e, CpuError::Unavailable { cpu: 4000, .. }), "{e}");
        assert!(e.to_string().contains("not available"));
    }

    #[test]
    fn pin_takes() {
        let cpu = available_cpus().ids()[0];
        std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            assert_eq!(current_thread_cpus().unwrap().ids(), [cpu]);
        })
        .join()
        .unwrap();
    }
}
