//! What a training run keeps of its steps' records: what its summary, plot
//! and report need, not the records themselves. A record is about 0.4 KB
//! (three scans, each with its row list); a run of many short steps (random
//! batches take tens of µs a step on a GPU) kept them all, gigabytes an
//! hour. A report's per-step entries go to a temporary file as they come,
//! and are read back into the report at its end.

use std::io::{BufRead, BufWriter, Seek, Write};

use latent_line::guard::Action;
use latent_line::report::StepEntry;
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
    /// Each step's own GPU time, where its pass was timed.
    pub gpu_seconds: Vec<f64>,
    /// `--plot`: each record's mean excess, by position.
    pub excess: Option<Vec<f64>>,
    /// `--report`, `--json`: the per-step entries, one JSON line each.
    steps: Option<StepLines>,
}

impl RunLog {
    pub fn new(plot: bool, report: bool) -> std::io::Result<RunLog> {
        Ok(RunLog {
            len: 0,
            first: None,
            last: None,
            aborted: None,
            counts: Vec::new(),
            gpu_seconds: Vec::new(),
            excess: plot.then(Vec::new),
            steps: if report { Some(StepLines::new()?) } else { None },
        })
    }

    /// Logs `r`, the record of `step` (`w_red` its reduction weight);
    /// false, and nothing logged, after an aborted step.
    pub fn push(&mut self, step: usize, r: Record, w_red: f64) -> std::io::Result<bool> {
        if self.aborted.is_some() {
            return Ok(false);
        }
        if r.action == Action::Aborted {
            self.aborted = Some(self.len);
        }
        if r.action != Action::NotRun {
            self.gpu_seconds.extend(r.gpu_seconds);
        }
        match self.counts.iter_mut().find(|(a, _)| *a == r.action) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((r.action, 1)),
        }
        if let Some(e) = &mut self.excess {
            e.push(r.mean_excess());
        }
        if let Some(s) = &mut self.steps {
            s.push(&StepEntry::new(step, &r, w_red))?;
        }
        if self.first.is_none() {
            self.first = Some(r.clone());
        }
        self.last = Some(r);
        self.len += 1;
        Ok(true)
    }

    /// Logs `r`, the final table's evaluation, of `step` (after an abort
    /// too).
    pub fn push_final(&mut self, step: usize, r: Record, w_red: f64) -> std::io::Result<()> {
        let aborted = self.aborted.take();
        let pushed = self.push(step, r, w_red);
        self.aborted = aborted;
        pushed.map(drop)
    }

    /// Records logged with action `a`.
    pub fn count(&self, a: Action) -> usize {
        self.counts.iter().find(|(b, _)| *b == a).map_or(0, |(_, n)| *n)
    }

    /// The per-step entries, for the report (empty where none were kept).
    pub fn steps(&mut self) -> std::io::Result<StepLines> {
        match self.steps.take() {
            Some(mut s) => {
                s.out.flush()?;
                Ok(s)
            }
            None => StepLines::new(),
        }
    }
}

/// A report's per-step entries in an unnamed temporary file, one compact
/// JSON object a line; serialized as the report's `steps` array, each
/// entry as it was written.
pub(crate) struct StepLines {
    out: BufWriter<std::fs::File>,
}

impl StepLines {
    fn new() -> std::io::Result<StepLines> {
        Ok(StepLines { out: BufWriter::new(tempfile::tempfile()?) })
    }

    fn push(&mut self, e: &StepEntry) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, e).map_err(std::io::Error::other)?;
        self.out.write_all(b"\n")
    }
}

impl serde::Serialize for StepLines {
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
            let kept = log.push(10 + i, r.clone(), 0.5).unwrap();
            assert_eq!(kept, i <= 3, "record {i}");
        }
        log.push_final(13, final_eval.clone(), 0.5).unwrap();
        assert_eq!((log.len, log.aborted), (5, Some(3)));
        assert_eq!(log.first.as_ref().map(|r| r.d0), Some(3.0));
        assert_eq!(log.last.as_ref(), Some(&final_eval));
        assert_eq!(
            [Action::Applied, Action::SkippedStep, Action::Aborted, Action::NotRun].map(|a| log.count(a)),
            [2, 1, 1, 0]
        );
        assert_eq!(log.gpu_seconds, [1e-3, 2e-3, 4e-3]);
        let excess = log.excess.clone().unwrap();
        assert_eq!(excess.len(), 5);
        assert!(excess[2].is_nan() && excess[4] == final_eval.mean_excess());
        let kept: Vec<(usize, &Record)> = (10..14).zip(&records[..4]).chain([(13, &final_eval)]).collect();
        let want: Vec<StepEntry> = kept.iter().map(|(s, r)| StepEntry::new(*s, r, 0.5)).collect();
        let steps = log.steps().unwrap();
        // The same text (compared as text: f32 fields print as f32 both
        // ways), twice: a report is written, then printed with --json.
        for _ in 0..2 {
            assert_eq!(serde_json::to_string(&steps).unwrap(), serde_json::to_string(&want).unwrap());
        }
    }
}
