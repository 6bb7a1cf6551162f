//! Which core each slot thread is pinned to.
//!
//! `core_affinity::get_core_ids()` lists only the cores in the calling thread's current
//! affinity mask, so the plan is made from that list, never from a guess; after pinning,
//! the thread checks with `sched_getcpu` where it actually runs.

/// Cores the calling thread may run on (its affinity mask), ascending.
pub fn available_cores() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// A kernel CPU list such as `2-5,8` (as in `/sys/devices/system/cpu/isolated`).
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                if a > b {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// The cores the kernel keeps other threads off (`isolcpus=`), if it says.
pub fn isolated_cores() -> Option<Vec<usize>> {
    parse_cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/isolated").ok()?)
}

/// Of the slots' `cores`, those the kernel does not isolate: a busy-spinning slot
/// there shares its core with whatever the scheduler puts on it.
pub fn not_isolated(cores: &[usize], isolated: &[usize]) -> Vec<usize> {
    let mut v: Vec<usize> = cores
        .iter()
        .copied()
        .filter(|c| !isolated.contains(c))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The core of each slot, and what had to be given up to get there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorePlan {
    /// `cores[i]` is slot i's core (`None`: not pinned).
    pub cores: Vec<Option<usize>>,
    /// Things the operator should know (logged as warnings by the caller).
    pub warnings: Vec<String>,
}

/// Assigns `slots` slots to the `requested` cores (all `available` ones when empty),
/// skipping requested cores this process may not use. More slots than usable cores share
/// cores round-robin, with a warning, rather than failing.
pub fn plan_cores(requested: &[usize], available: &[usize], slots: usize) -> CorePlan {
    let mut warnings = Vec::new();
    let usable: Vec<usize> = if requested.is_empty() {
        available.to_vec()
    } else {
        let mut u = Vec::new();
        for &c in requested {
            if !available.contains(&c) {
                warnings.push(format!(
                    "core {c} is configured but not in this process's CPU set {available:?}; skipped"
                ));
            } else if !u.contains(&c) {
                u.push(c);
            }
        }
        u
    };
    if usable.is_empty() {
        if slots > 0 {
            warnings.push("no usable core to pin to; slots run unpinned".to_string());
        }
        return CorePlan {
            cores: vec![None; slots],
            warnings,
        };
    }
    if slots > usable.len() {
        warnings.push(format!(
            "{slots} slots but {} usable core(s) {usable:?}: slots share cores, \
             so busy-spinning slots will compete",
            usable.len()
        ));
    }
    CorePlan {
        cores: (0..slots).map(|i| Some(usable[i % usable.len()])).collect(),
        warnings,
    }
}

/// Pins the calling thread to `core` and checks where it runs. Failure is logged, not
/// fatal: an unpinned slot is slower, not wrong.
pub(crate) fn pin_current(slot: usize, core: usize) -> bool {
    let ok = core_affinity::set_for_current(core_affinity::CoreId { id: core });
    if !ok {
        tracing::warn!(slot, core, "could not pin slot thread; it runs unpinned");
        return false;
    }
    match crate::sys::current_cpu() {
        Some(cpu) if cpu != core => {
            tracing::warn!(
                slot,
                core,
                cpu,
                "slot thread pinned but runs on another cpu"
            );
            false
        }
        cpu => {
            tracing::debug!(slot, core, ?cpu, "slot thread pinned");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_core_per_slot_when_enough() {
        let p = plan_cores(&[], &[0, 1, 2], 2);
        assert_eq!(p.cores, vec![Some(0), Some(1)]);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn more_slots_than_cores_share_with_a_warning() {
        let p = plan_cores(&[1], &[0, 1], 3);
        assert_eq!(p.cores, vec![Some(1), Some(1), Some(1)]);
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].contains("share"), "{:?}", p.warnings);
    }

    #[test]
    fn unavailable_cores_are_skipped_and_named() {
        let p = plan_cores(&[7, 0, 0], &[0, 1], 2);
        assert_eq!(p.cores, vec![Some(0), Some(0)]);
        assert!(
            p.warnings.iter().any(|w| w.contains("core 7")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn kernel_cpu_lists_parse() {
        assert_eq!(parse_cpu_list("2-4,8\n"), Some(vec![2, 3, 4, 8]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("4-2"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(not_isolated(&[1, 2, 3, 2], &[2]), vec![1, 3]);
    }

    #[test]
    fn nothing_usable_runs_unpinned() {
        let p = plan_cores(&[9], &[0], 2);
        assert_eq!(p.cores, vec![None, None]);
        assert!(p.warnings.iter().any(|w| w.contains("unpinned")));
    }

    #[test]
    fn pinning_lands_on_the_core() {
        let cores = available_cores();
        assert!(!cores.is_empty());
        let core = *cores.last().unwrap();
        let on = std::thread::spawn(move || {
            pin_current(0, core);
            crate::sys::current_cpu()
        })
        .join()
        .unwrap();
        assert_eq!(on, Some(core));
    }
}
