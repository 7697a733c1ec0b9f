//! What a training run keeps of its steps' records: what its summary, plot
//! and report need, not the records themselves. A record is about 0.4 KB
//! (three scans, each with its row list); a run of many short steps (random
//! batches take tens of µs a step on a GPU) kept them all, gigabytes an
//! hour. A report's per-step entries go to a temporary file as they come,
//! and are read back into the report at its end.

use std::io::{BufRead, BufWriter, Seek, Write};

use latent_line::guard::Action;
use latent_line::report::{Event, StepEntry};
use latent_line::Record;
use serde::ser::{Error as _, SerializeSeq};

/// The records of a run's steps, in order, then the final table's
/// evaluation; after an abort, none past the aborted step (what follows it
/// did nothing).
pub(crate) struct RunLog {
    /// Records logged, the final evaluation included once pushed.
    pub len: usize,
    pub first: Option<Record>,
    pub last: Option<Record>,
    /// The position of the aborted step's record.
    pub aborted: Option<usize>,
    counts: Vec<(Action, usize)>,
    /// Each step's own GPU time, where its pass was timed, for their median.
    pub gpu_seconds: Tally,
    /// `--plot`: each record's mean excess, by position.
    pub excess: Option<Vec<f64>>,
    /// `--report`, `--json`: the per-step entries, one JSON line each …
    steps: Option<JsonLines>,
    /// … and the non-finite events (a poisoned row under skip-row makes
    /// some every step).
    events: Option<JsonLines>,
    /// Events logged.
    pub event_count: usize,
    /// The first failure to write the lists above: the report is lost
    /// (said at its end, as a report that cannot be written is), the run
    /// goes on and saves as it would.
    lost: Option<String>,
}

impl RunLog {
    pub fn new(plot: bool, report: bool) -> std::io::Result<RunLog> {
        Ok(RunLog {
            len: 0,
            first: None,
            last: None,
            aborted: None,
            counts: Vec::new(),
            gpu_seconds: Tally::default(),
            excess: plot.then(Vec::new),
            steps: if report { Some(JsonLines::new()?) } else { None },
            events: if report { Some(JsonLines::new()?) } else { None },
            event_count: 0,
            lost: None,
        })
    }

    /// Logs `r`, the record of `step` (`w_red` its reduction weight);
    /// false, and nothing logged, after an aborted step.
    pub fn push(&mut self, step: usize, r: Record, w_red: f64) -> bool {
        if self.aborted.is_some() {
            return false;
        }
        self.log(step, r, w_red);
        true
    }

    /// Logs `r`, the final table's evaluation, of `step` (after an abort
    /// too).
    pub fn push_final(&mut self, step: usize, r: Record, w_red: f64) {
        self.log(step, r, w_red);
    }

    fn log(&mut self, step: usize, r: Record, w_red: f64) {
        if let Some(s) = &mut self.steps {
            let written = s.push(&StepEntry::new(step, &r, w_red));
            self.keep(written, "steps");
        }
        if r.action == Action::Aborted {
            self.aborted = Some(self.len);
        }
        if r.action != Action::NotRun {
            if let Some(s) = r.gpu_seconds {
                self.gpu_seconds.add(s);
            }
        }
        match self.counts.iter_mut().find(|(a, _)| *a == r.action) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((r.action, 1)),
        }
        if let Some(e) = &mut self.excess {
            e.push(r.mean_excess());
        }
        if self.first.is_none() {
            self.first = Some(r.clone());
        }
        self.last = Some(r);
        self.len += 1;
    }

    /// After a write to a report's list: on its first failure, the lists
    /// are dropped and the failure kept for the report's end.
    fn keep(&mut self, written: std::io::Result<()>, what: &str) {
        if let Err(e) = written {
            self.lost.get_or_insert_with(|| format!("writing the report's {what} to a temporary file: {e}"));
            (self.steps, self.events) = (None, None);
        }
    }

    /// Records logged with action `a`.
    pub fn count(&self, a: Action) -> usize {
        self.counts.iter().find(|(b, _)| *b == a).map_or(0, |(_, n)| *n)
    }

    /// Logs a non-finite event.
    pub fn event(&mut self, e: &Event) {
        self.event_count += 1;
        if let Some(lines) = &mut self.events {
            let written = lines.push(e);
            self.keep(written, "events");
        }
    }

    /// The per-step entries and the events, for the report; an error
    /// saying why where they were lost.
    pub fn for_report(&mut self) -> Result<(JsonLines, JsonLines), String> {
        let flushed = |lines: Option<JsonLines>, what: &str| match lines {
            Some(mut l) => {
                l.out.flush().map(|_| l).map_err(|e| format!("writing the report's {what} to a temporary file: {e}"))
            }
            None => Err(format!("the report's {what} were not kept")),
        };
        if let Some(lost) = self.lost.take() {
            return Err(lost);
        }
        Ok((flushed(self.steps.take(), "steps")?, flushed(self.events.take(), "events")?))
    }
}

/// Values counted by value, for their exact median in memory that grows
/// with the distinct values, not with the values: a step's GPU time is a
/// whole number of the device's timestamp ticks, and a run's steps take a
/// few thousand distinct ones however many steps it runs.
#[derive(Default)]
pub(crate) struct Tally {
    /// By `total_cmp` order (the key below), with how many of each.
    counts: std::collections::BTreeMap<i64, u64>,
    pub len: u64,
    /// Low mantissa bits each value is rounded off at (0: exact).
    coarse: u32,
}

/// f64 → i64 ordered as `f64::total_cmp` orders the values.
fn order_key(x: f64) -> i64 {
    let b = x.to_bits() as i64;
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

fn of_key(k: i64) -> f64 {
    f64::from_bits((k ^ ((((k >> 63) as u64) >> 1) as i64)) as u64)
}

impl Tally {
    /// A tally of values that are not whole ticks (the wall clock's
    /// spacing of records: all distinct), each rounded to 10 bits of
    /// mantissa (within 0.05 %), so that it holds at most 1024 values an
    /// octave.
    pub fn coarse() -> Tally {
        Tally { coarse: 42, ..Tally::default() }
    }

    pub fn add(&mut self, x: f64) {
        let x = match self.coarse {
            0 => x,
            c if x.is_finite() => {
                let b = x.to_bits();
                f64::from_bits((b + (1 << (c - 1))) & !((1u64 << c) - 1))
            }
            _ => x,
        };
        *self.counts.entry(order_key(x)).or_default() += 1;
        self.len += 1;
    }

    /// The median, as `report::median` takes it of the values listed
    /// (the mean of the two middle ones of an even count); `None` of none.
    pub fn median(&self) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        // The values at sorted positions (len − 1) / 2 and len / 2.
        let (lo, hi) = ((self.len - 1) / 2, self.len / 2);
        let (mut seen, mut at_lo) = (0u64, None);
        for (&k, &n) in &self.counts {
            seen += n;
            if at_lo.is_none() && seen > lo {
                at_lo = Some(of_key(k));
            }
            if seen > hi {
                let (a, b) = (at_lo.unwrap_or(of_key(k)), of_key(k));
                return Some(if lo == hi { b } else { 0.5 * (a + b) });
            }
        }
        None
    }
}

/// A report's list (its per-step entries, its events) in an unnamed
/// temporary file, one compact JSON value a line; serialized as a JSON
/// array, each value as it was written.
pub(crate) struct JsonLines {
    out: BufWriter<std::fs::File>,
}

impl JsonLines {
    fn new() -> std::io::Result<JsonLines> {
        Ok(JsonLines { out: BufWriter::new(tempfile::tempfile()?) })
    }

    fn push(&mut self, v: &impl serde::Serialize) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, v).map_err(std::io::Error::other)?;
        self.out.write_all(b"\n")
    }
}

impl serde::Serialize for JsonLines {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut file = self.out.get_ref().try_clone().map_err(S::Error::custom)?;
        file.rewind().map_err(S::Error::custom)?;
        let mut seq = s.serialize_seq(None)?;
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(S::Error::custom)?;
            let raw: Box<serde_json::value::RawValue> = serde_json::from_str(&line).map_err(S::Error::custom)?;
            seq.serialize_element(&raw)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(d0: f64, action: Action, gpu: Option<f64>) -> Record {
        Record {
            excess_sum: 10.0 * d0,
            excess_max: d0,
            d0,
            batch: 7,
            near_singular: 1,
            lr: 0.1,
            separation: 0.0,
            action,
            grad_norm: None,
            scans: Default::default(),
            gpu_seconds: gpu,
        }
    }

    /// The log keeps what the records said: counts, ends, GPU times, and
    /// the report's entries exactly as a list of the records would give
    /// them; none past an aborted step but the final evaluation.
    #[test]
    fn the_log_reports_what_a_list_of_the_records_would() {
        let records = [
            record(3.0, Action::Applied, Some(1e-3)),
            record(2.5, Action::SkippedStep, Some(2e-3)),
            record(f64::NAN, Action::Applied, None),
            record(2.0, Action::Aborted, Some(4e-3)),
            record(0.0, Action::NotRun, Some(5e-3)),
        ];
        let final_eval = record(1.5, Action::Evaluated, None);
        let mut log = RunLog::new(true, true).unwrap();
        for (i, r) in records.iter().enumerate() {
            let kept = log.push(10 + i, r.clone(), 0.5);
            assert_eq!(kept, i <= 3, "record {i}");
        }
        log.push_final(13, final_eval.clone(), 0.5);
        assert_eq!((log.len, log.aborted), (5, Some(3)));
        assert_eq!(log.first.as_ref().map(|r| r.d0), Some(3.0));
        assert_eq!(log.last.as_ref(), Some(&final_eval));
        assert_eq!(
            [Action::Applied, Action::SkippedStep, Action::Aborted, Action::NotRun].map(|a| log.count(a)),
            [2, 1, 1, 0]
        );
        assert_eq!((log.gpu_seconds.len, log.gpu_seconds.median()), (3, Some(2e-3)));
        let excess = log.excess.clone().unwrap();
        assert_eq!(excess.len(), 5);
        assert!(excess[2].is_nan() && excess[4] == final_eval.mean_excess());
        let kept: Vec<(usize, &Record)> = (10..14).zip(&records[..4]).chain([(13, &final_eval)]).collect();
        let want: Vec<StepEntry> = kept.iter().map(|(s, r)| StepEntry::new(*s, r, 0.5)).collect();
        let e = Event { step: Some(3), buffer: "table", scan: Default::default(), strikes: vec![2], action: None };
        log.event(&e);
        log.event(&e);
        assert_eq!(log.event_count, 2);
        let (steps, events) = log.for_report().unwrap();
        assert_eq!(serde_json::to_string(&events).unwrap(), serde_json::to_string(&[&e, &e]).unwrap());
        // The same text (compared as text: f32 fields print as f32 both
        // ways), twice: a report is written, then printed with --json.
        for _ in 0..2 {
            assert_eq!(serde_json::to_string(&steps).unwrap(), serde_json::to_string(&want).unwrap());
        }
    }
}

#[cfg(all(test, unix))]
mod lost_tests {
    use super::*;

    /// A report's list that cannot be written (a full temporary folder)
    /// loses the report, not the run: the log goes on counting, and says
    /// why at the report's end.
    #[test]
    fn a_list_that_cannot_be_written_loses_the_report_not_the_run() {
        let mut log = RunLog::new(false, true).unwrap();
        // Opened for reading only: every write fails (once the buffer fills).
        let unwritable = || JsonLines { out: BufWriter::new(std::fs::File::open("/dev/null").unwrap()) };
        log.steps = Some(unwritable());
        let r = Record {
            excess_sum: 1.0,
            excess_max: 1.0,
            d0: 2.0,
            batch: 3,
            near_singular: 0,
            lr: 0.1,
            separation: 0.0,
            action: Action::Applied,
            grad_norm: None,
            scans: Default::default(),
            gpu_seconds: None,
        };
        for i in 0..100 {
            assert!(log.push(i, r.clone(), 1.0));
        }
        assert_eq!((log.len, log.count(Action::Applied)), (100, 100));
        assert!(log.steps.is_none() && log.events.is_none(), "the lists are dropped once one fails");
        let lost = log.for_report().err().expect("the report is lost");
        assert!(lost.contains("writing the report's steps to a temporary file"), "{lost}");
    }
}

#[cfg(test)]
mod tally_tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The tally's median is `report::median` of the values, bit for bit,
    /// for counts odd and even, repeats, and values of any sign.
    #[test]
    fn a_tally_gives_the_median_of_its_values() {
        let seed = std::env::var("LATENT_LINE_TEST_SEED").map_or_else(|_| rand::random(), |s| s.parse().unwrap());
        eprintln!("tally: seed {seed} (replay with LATENT_LINE_TEST_SEED={seed})");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        assert_eq!(Tally::default().median(), None);
        for n in [1usize, 2, 3, 4, 17, 1000, 1001] {
            // Few distinct values (as timestamp ticks are), or all distinct.
            for distinct in [3u32, u32::MAX] {
                let v: Vec<f64> = (0..n)
                    .map(|_| match distinct {
                        3 => [3.5e-5, 3.6e-5, 4e-5][rng.random_range(0..3)],
                        _ => rng.random_range(-1e-3..1e-3),
                    })
                    .collect();
                let mut t = Tally::default();
                v.iter().for_each(|&x| t.add(x));
                let want = latent_line::report::median(v.clone());
                assert_eq!(t.median().map(f64::to_bits), Some(want.to_bits()), "seed {seed}, {n} values: {v:?}");
                // Coarse: within 2^-10 of it, in at most 1024 keys an octave.
                let mut c = Tally::coarse();
                v.iter().for_each(|&x| c.add(x));
                let got = c.median().unwrap();
                let scale = v.iter().fold(0f64, |m, x| m.max(x.abs()));
                assert!((got - want).abs() <= scale / 1024.0, "seed {seed}: {got} vs {want}");
                assert!(c.counts.len() <= t.counts.len());
            }
        }
    }
}
