//! SPEC §9: what happens when a step meets a non-finite value. The GPU
//! decides in `shaders/reduce.wgsl` (no host round trip); [`GuardState::decide`]
//! is the same state machine for the CPU backend (the same transitions;
//! the shader resets `skips` in its ignore and skip-row branches, `decide`
//! before its match).

/// `--on-nonfinite`: the policy (values match the shaders' `GUARD_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Record and go on: non-finite values are written.
    Ignore,
    /// A step that would write any non-finite value writes nothing.
    SkipStep,
    /// Rows whose new value would be non-finite keep their old value.
    SkipRow,
    /// Restore the last snapshot, back off the learning rate, go on.
    Rollback,
    /// Leave the table as it was before the step and stop (exit code 3).
    Abort,
}

impl Policy {
    /// Its name as `--on-nonfinite` spells it (`skip-step`, …): clap's.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map(|v| v.get_name().to_owned()).unwrap_or_default()
    }
    /// The shaders' `GUARD` override constant.
    pub fn shader_value(self) -> u32 {
        match self {
            Policy::Ignore => 0,
            Policy::SkipStep => 1,
            Policy::SkipRow => 2,
            Policy::Rollback => 3,
            Policy::Abort => 4,
        }
    }
    /// Whether each step writes into a second table buffer and only a clean
    /// step switches to it (the failing step is dropped for free).
    pub fn double_buffered(self) -> bool {
        matches!(self, Policy::SkipStep | Policy::Rollback | Policy::Abort)
    }
}

/// The guard's options, with SPEC §9's defaults.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Guard {
    pub policy: Policy,
    /// skip-step: consecutive skipped steps allowed; the next failure in a
    /// row aborts.
    pub max_skips: u32,
    /// rollback: snapshot the table every this many steps.
    pub snapshot_every: u32,
    /// rollback: learning-rate factor per rollback.
    pub backoff: f32,
    /// rollback: abort when a failure would need one rollback more than this.
    pub max_rollbacks: u32,
}

impl Default for Guard {
    fn default() -> Self {
        Guard { policy: Policy::SkipStep, max_skips: 10, snapshot_every: 100, backoff: 0.5, max_rollbacks: 3 }
    }
}

/// SPEC §8: a row is near-singular when s1 or s2 < (τ·d0)².
pub const TAU: f32 = 1e-3;
/// SPEC §8: warn when d0 falls below this fraction of its step-0 value.
pub const COLLAPSE_FRACTION: f64 = 0.1;

/// What the guard did with a pass (the shaders' `ACT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Applied,
    /// Non-finite values were found and written (`ignore`).
    Ignored,
    SkippedStep,
    SkippedRows,
    RolledBack,
    Aborted,
    /// The run had already aborted; nothing ran.
    NotRun,
    /// A forward evaluation; nothing to guard.
    Evaluated,
}

impl Action {
    /// Its name as the report spells it (`skipped-step`, …).
    pub fn name(self) -> &'static str {
        match self {
            Action::Applied => "applied",
            Action::Ignored => "ignored",
            Action::SkippedStep => "skipped-step",
            Action::SkippedRows => "skipped-rows",
            Action::RolledBack => "rolled-back",
            Action::Aborted => "aborted",
            Action::NotRun => "not-run",
            Action::Evaluated => "evaluated",
        }
    }

    pub fn from_code(c: u32) -> Action {
        match c {
            0 => Action::Applied,
            1 => Action::Ignored,
            2 => Action::SkippedStep,
            3 => Action::SkippedRows,
            4 => Action::RolledBack,
            5 => Action::Aborted,
            7 => Action::Evaluated,
            _ => Action::NotRun,
        }
    }
    /// Did this pass change the table?
    pub fn wrote(self) -> bool {
        matches!(self, Action::Applied | Action::Ignored | Action::SkippedRows | Action::RolledBack)
    }
}

/// The run state the guard keeps between steps (the shaders' `State`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardState {
    /// Which table buffer is current (double-buffered policies).
    pub cur: u32,
    pub halted: bool,
    pub lr: f32,
    pub skips: u32,
    pub rollbacks: u32,
    /// The snapshot must be copied back before the next step.
    pub restore: bool,
}

/// The consecutive skips and the rollbacks that a resume goes on from,
/// given the guard's counters after a run: an aborted step is not done
/// (the table is as before it, and the resume runs it again), so the
/// failure that it counted is not kept either; otherwise a resume with a
/// higher `--max-skips` or `--max-rollbacks` would abort a step before an
/// unbroken run did.
pub fn resume_counters(policy: Policy, halted: bool, skips: u32, rollbacks: u32) -> (u32, u32) {
    match (halted, policy) {
        (true, Policy::SkipStep) => (skips.saturating_sub(1), rollbacks),
        (true, Policy::Rollback) => (skips, rollbacks.saturating_sub(1)),
        _ => (skips, rollbacks),
    }
}

impl GuardState {
    pub fn new(lr: f32) -> Self {
        GuardState { cur: 0, halted: false, lr, skips: 0, rollbacks: 0, restore: false }
    }

    /// The decision of `reduce.wgsl` after a step that found non-finite
    /// values (`bad`) or not.
    pub fn decide(&mut self, g: &Guard, bad: bool) -> Action {
        // `skips` counts consecutive skipped steps: a step applied, under
        // any policy, ends them (a run resumed from a skip-step run's
        // checkpoint under ignore or skip-row carries its count).
        if matches!(g.policy, Policy::Ignore | Policy::SkipRow) {
            self.skips = 0;
        }
        match g.policy {
            Policy::Ignore => {
                if bad {
                    Action::Ignored
                } else {
                    Action::Applied
                }
            }
            Policy::SkipRow => {
                if bad {
                    Action::SkippedRows
                } else {
                    Action::Applied
                }
            }
            _ if !bad => {
                self.cur = 1 - self.cur;
                self.skips = 0;
                Action::Applied
            }
            Policy::SkipStep => {
                // K skips allowed; the next failure in a row aborts (as
                // rollback allows K rollbacks).
                // (u32 arithmetic wraps, as reduce.wgsl's does.)
                self.skips = self.skips.wrapping_add(1);
                if self.skips > g.max_skips {
                    self.halted = true;
                    Action::Aborted
                } else {
                    Action::SkippedStep
                }
            }
            Policy::Rollback => {
                self.rollbacks = self.rollbacks.wrapping_add(1);
                if self.rollbacks > g.max_rollbacks {
                    self.halted = true;
                    Action::Aborted
                } else {
                    self.restore = true;
                    self.lr *= g.backoff;
                    Action::RolledBack
                }
            }
            Policy::Abort => {
                self.halted = true;
                Action::Aborted
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Policy::name` is `--on-nonfinite`'s spelling (messages name the
    /// guard so: `skip-step`, not `SkipStep`).
    #[test]
    fn policy_names_are_the_options() {
        let names: Vec<String> = [Policy::Ignore, Policy::SkipStep, Policy::SkipRow, Policy::Rollback, Policy::Abort]
            .into_iter()
            .map(Policy::name)
            .collect();
        assert_eq!(names, ["ignore", "skip-step", "skip-row", "rollback", "abort"]);
    }

    /// `Action::name` is the report's spelling (serde's kebab-case) of
    /// every action.
    #[test]
    fn action_names_are_the_reports() {
        for code in 0..8 {
            let a = Action::from_code(code);
            assert_eq!(serde_json::to_value(a).unwrap(), a.name(), "{a:?}");
        }
    }

    /// Only a halted run's own policy un-counts the aborted step's failure,
    /// one; other policies keep their counters as they are.
    #[test]
    fn resume_counters_drop_the_aborted_steps_failure_only() {
        for policy in [Policy::Ignore, Policy::SkipStep, Policy::SkipRow, Policy::Rollback, Policy::Abort] {
            for halted in [false, true] {
                let (skips, rollbacks) = resume_counters(policy, halted, 7, 3);
                let want = match (halted, policy) {
                    (true, Policy::SkipStep) => (6, 3),
                    (true, Policy::Rollback) => (7, 2),
                    _ => (7, 3),
                };
                assert_eq!((skips, rollbacks), want, "{policy:?}, halted {halted}");
            }
        }
        assert_eq!(resume_counters(Policy::SkipStep, true, 0, 0), (0, 0), "no underflow");
    }
}
