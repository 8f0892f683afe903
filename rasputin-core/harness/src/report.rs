//! What a campaign found: operations, faults, availability and anomalies.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::nemesis::FaultKind;
use super::splitter::SplitCounts;
use super::workload::{Outcome, Recorded};
use rasputin_checker::Verdict;

/// One round of faults, in nanoseconds since the workload started.
#[derive(Clone, Debug)]
pub struct FaultWindow {
    pub kinds: Vec<FaultKind>,
    pub start_ns: u64,
    pub end_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PorcupineVerdict {
    Linearizable,
    NotLinearizable { html: PathBuf },
    Undecided,
    NotRun,
}

pub struct Report {
    pub nodes: usize,
    pub network: &'static str,
    pub seconds: f64,
    pub operations: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub faults: BTreeMap<&'static str, usize>,
    /// Share of operations invoked while a fault was in force that succeeded.
    pub availability_during: f64,
    /// The same share for operations invoked with no fault in force.
    pub availability_after: f64,
    /// The longest time in which no operation completed successfully: what
    /// the share above hides when clients wait out an outage.
    pub longest_gap_seconds: f64,
    pub ours: Verdict,
    pub porcupine: PorcupineVerdict,
    pub foreign_values: Vec<String>,
    pub panics: Vec<String>,
    pub history: PathBuf,
    /// With the split nemesis: what the splits came to, and whether every
    /// node then hosted the same ranges (how many), or what each hosted.
    pub splits: Option<Splits>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Splits {
    pub counts: SplitCounts,
    pub converged: Result<usize, String>,
}

/// The share of `outcomes` that succeeded (1.0 when there are none).
fn availability<'a>(outcomes: impl Iterator<Item = &'a (u64, Outcome)>) -> f64 {
    let (mut total, mut ok) = (0usize, 0usize);
    for (_, outcome) in outcomes {
        total += 1;
        ok += usize::from(*outcome == Outcome::Ok);
    }
    if total == 0 {
        1.0
    } else {
        ok as f64 / total as f64
    }
}

/// The longest stretch of the run, its ends included, without a successful completion.
fn longest_gap_ns(recorded: &Recorded, end_ns: u64) -> u64 {
    let mut completions: Vec<u64> = recorded.operations.iter().filter_map(|operation| operation.complete_ns).collect();
    completions.sort_unstable();
    let mut previous = 0;
    let mut longest = 0;
    for time in completions.into_iter().chain([end_ns]) {
        longest = longest.max(time.saturating_sub(previous));
        previous = time;
    }
    longest
}

/// Counts faults by kind name.
fn faults_by_kind(windows: &[FaultWindow]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for window in windows {
        for kind in &window.kinds {
            *counts.entry(kind.name()).or_default() += 1;
        }
    }
    counts
}

impl Report {
    pub fn measure(
        nodes: usize,
        network: &'static str,
        recorded: &Recorded,
        windows: &[FaultWindow],
        end_ns: u64,
    ) -> Report {
        let during = |time: u64| windows.iter().any(|window| (window.start_ns..window.end_ns).contains(&time));
        let count = |wanted: Outcome| recorded.outcomes.iter().filter(|(_, outcome)| *outcome == wanted).count();
        Report {
            nodes,
            network,
            seconds: end_ns as f64 / 1e9,
            operations: recorded.outcomes.len(),
            ok: count(Outcome::Ok),
            failed: count(Outcome::Failed),
            unknown: count(Outcome::Unknown),
            faults: faults_by_kind(windows),
            availability_during: availability(recorded.outcomes.iter().filter(|(time, _)| during(*time))),
            availability_after: availability(recorded.outcomes.iter().filter(|(time, _)| !during(*time))),
            longest_gap_seconds: longest_gap_ns(recorded, end_ns) as f64 / 1e9,
            ours: Verdict::Linearizable,
            porcupine: PorcupineVerdict::NotRun,
            foreign_values: recorded.foreign_values.clone(),
            panics: Vec::new(),
            history: PathBuf::new(),
            splits: None,
        }
    }

    /// Everything that shows the system misbehaved. Must be empty.
    pub fn anomalies(&self) -> Vec<String> {
        let mut found = Vec::new();
        if let Verdict::NotLinearizable(violation) = &self.ours {
            found.push(format!("rasputin's checker: {}", violation.explanation));
        }
        if let PorcupineVerdict::NotLinearizable { html } = &self.porcupine {
            found.push(format!("Porcupine: not linearizable (see {})", html.display()));
        }
        found.extend(self.foreign_values.iter().map(|value| format!("a value nobody wrote: {value}")));
        found.extend(self.panics.iter().map(|line| format!("a node panicked: {line}")));
        if let Some(Splits { converged: Err(error), .. }) = &self.splits {
            found.push(error.clone());
        }
        found
    }

    pub fn inconclusive(&self) -> bool {
        matches!(self.ours, Verdict::Inconclusive { .. }) || self.porcupine == PorcupineVerdict::Undecided
    }

    fn verdicts(&self) -> String {
        let ours = match &self.ours {
            Verdict::Linearizable => "linearizable".to_string(),
            Verdict::NotLinearizable(_) => "NOT linearizable".to_string(),
            Verdict::Inconclusive { key, .. } => format!("inconclusive (key {key})"),
        };
        let porcupine = match &self.porcupine {
            PorcupineVerdict::Linearizable => "linearizable",
            PorcupineVerdict::NotLinearizable { .. } => "NOT linearizable",
            PorcupineVerdict::Undecided => "undecided",
            PorcupineVerdict::NotRun => "not run (no porcupine-check given)",
        };
        format!("rasputin's checker: {ours}; Porcupine: {porcupine}")
    }

    /// The header of the results table in `docs/testing.md`.
    pub const TABLE_HEADER: &'static str = "| nodes | network | seconds | operations (ok / failed / unknown) | faults by kind | availability during / after faults (longest gap) | anomalies |\n|---|---|---|---|---|---|---|";

    /// This campaign as a row of that table.
    pub fn table_row(&self) -> String {
        let faults: Vec<String> = self.faults.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
        format!(
            "| {} | {} | {:.0} | {} ({} / {} / {}) | {} | {:.1}% / {:.1}% ({:.1} s) | {} |",
            self.nodes,
            self.network,
            self.seconds,
            self.operations,
            self.ok,
            self.failed,
            self.unknown,
            faults.join(", "),
            self.availability_during * 100.0,
            self.availability_after * 100.0,
            self.longest_gap_seconds,
            self.anomalies().len()
        )
    }

    pub fn print(&self) {
        println!("history: {}", self.history.display());
        println!("{}", self.verdicts());
        for anomaly in self.anomalies() {
            println!("ANOMALY: {anomaly}");
        }
        if let Some(Splits { counts, converged }) = &self.splits {
            let hosted = converged.as_ref().map_or_else(|_| "not the same on every node".to_string(), usize::to_string);
            println!(
                "splits: {} made, {} at keys starting a range already, {} not made (no leader in time); ranges at the end: {hosted}",
                counts.made, counts.already, counts.failed
            );
        }
        println!("{}", Report::TABLE_HEADER);
        println!("{}", self.table_row());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_splits_operations_by_whether_a_fault_was_in_force() {
        let read = |complete_ns| rasputin_checker::Operation {
            client: 1,
            key: 0,
            input: rasputin_checker::Input::Read,
            invoke_ns: 0,
            complete_ns: Some(complete_ns),
            output: Some(rasputin_checker::Output::Read(None)),
        };
        let recorded = Recorded {
            operations: vec![read(1_000_000_000), read(3_500_000_000)],
            outcomes: vec![
                (5, Outcome::Ok),
                (10, Outcome::Ok),
                (12, Outcome::Unknown),
                (15, Outcome::Failed),
                (19, Outcome::Ok),
                (20, Outcome::Ok),
                (30, Outcome::Ok),
            ],
            foreign_values: vec!["key 1: read \"x\"".to_string()],
        };
        let windows = [FaultWindow { kinds: vec![FaultKind::KillAll, FaultKind::Isolate], start_ns: 10, end_ns: 20 }];
        let report = Report::measure(3, "test", &recorded, &windows, 4_000_000_000);
        assert_eq!((report.operations, report.ok, report.failed, report.unknown), (7, 5, 1, 1));
        assert_eq!(report.availability_during, 0.5);
        assert_eq!(report.availability_after, 1.0);
        assert_eq!(report.faults.values().sum::<usize>(), 2);
        assert_eq!(report.anomalies().len(), 1, "a value nobody wrote is an anomaly");
        assert!(report.table_row().contains("| 50.0% / 100.0% (2.5 s) | 1 |"), "{}", report.table_row());
    }
}
