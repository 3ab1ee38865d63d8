//! What every test daemon is told about the machine it shares with other tests, cargo and whatever else
//! the runner carries: the guards that judge the machine as a whole stand aside, unless a test sets them.

/// `AURA_*` overrides applied before a test's own (which win). CPU used by another test's daemon or by a
/// build is "outside Aura" for this one, so the outside-CPU guard would pause admission, and the throttle
/// cap jobs, at random; and how full the runner's disk happens to be (one CI runner had 1.5 % free) must
/// not pause admission or degrade readiness. The memory guards stay on; the CPU guard, the throttle, the
/// disk guard and the janitor's low-disk mode have tests of their own that set them.
pub const SHARED_MACHINE: &[(&str, &str)] = &[
    ("AURA_GUARDS__MAX_OUTSIDE_CPU", "1.0"),
    ("AURA_GUARDS__RESUME_OUTSIDE_CPU", "0.95"),
    ("AURA_GUARDS__THROTTLE__ENABLED", "false"),
    ("AURA_GUARDS__MIN_FREE_DISK", "0"),
    ("AURA_GUARDS__RESUME_FREE_DISK", "0"),
    ("AURA_JANITOR__LOW_FREE_DISK", "0"),
];
