//! Histories as JSON lines, for checkers outside this crate (Porcupine).
//! The format is in `docs/history.md`: one event per line, an `invoke` and
//! then an `ok` (or, for an unknown outcome, an `info`) per operation.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::{json, Value as Json};

use super::{Input, Operation, Output};

/// One line of the history: the fields of `docs/history.md`, in its order.
#[derive(Serialize)]
struct Event {
    client: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    f: &'static str,
    key: u64,
    value: Json,
    time_ns: u64,
}

fn invocation(input: &Input) -> (&'static str, Json) {
    match input {
        Input::Read => ("read", Json::Null),
        Input::Write(id) => ("write", json!(id)),
        Input::Cas { expected, new } => ("cas", json!([expected, new])),
        Input::Delete => ("delete", Json::Null),
    }
}

fn completion(output: &Output, input: &Input) -> Json {
    match (output, input) {
        (Output::Read(seen), _) => json!(seen),
        (Output::Write, Input::Write(id)) => json!(id),
        (Output::Write, _) => Json::Null,
        (Output::Cas { success, current }, _) => json!([success, current]),
        (Output::Delete(previous), _) => json!(previous),
    }
}

/// Writes `history` as JSON lines, events in time order. An operation with
/// an unknown outcome gets its `info` line when its client moves on to its
/// next operation (or at `end_ns`), so that each client's events pair up;
/// the line's time says nothing about when the operation took effect.
pub fn write_json_lines(history: &[Operation], end_ns: u64, out: &mut impl Write) -> io::Result<()> {
    let mut invocations: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for operation in history {
        invocations.entry(operation.client).or_default().push(operation.invoke_ns);
    }
    for times in invocations.values_mut() {
        times.sort_unstable();
    }
    let gave_up_at = |operation: &Operation| {
        let times = &invocations[&operation.client];
        let next = times.partition_point(|&time| time <= operation.invoke_ns);
        times.get(next).copied().unwrap_or(end_ns).max(operation.invoke_ns)
    };
    let mut events: Vec<(u64, usize, Event)> = Vec::with_capacity(history.len() * 2);
    for (number, operation) in history.iter().enumerate() {
        let (f, argument) = invocation(&operation.input);
        let (client, key) = (operation.client, operation.key);
        let event = |kind, value, time_ns| Event { client, kind, f, key, value, time_ns };
        events.push((operation.invoke_ns, 2 * number, event("invoke", argument, operation.invoke_ns)));
        let (at, kind, value) = match (&operation.output, operation.complete_ns) {
            (Some(output), Some(at)) => (at, "ok", completion(output, &operation.input)),
            _ => (gave_up_at(operation), "info", Json::Null),
        };
        events.push((at, 2 * number + 1, event(kind, value, at)));
    }
    events.sort_unstable_by_key(|(time, order, _)| (*time, *order));
    for (_, _, event) in events {
        serde_json::to_writer(&mut *out, &event)?;
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_event_is_written_in_time_order() {
        let history = vec![
            Operation {
                client: 1,
                key: 0,
                input: Input::Write(5),
                invoke_ns: 10,
                complete_ns: Some(20),
                output: Some(Output::Write),
            },
            Operation {
                client: 2,
                key: 0,
                input: Input::Cas { expected: 5, new: 6 },
                invoke_ns: 15,
                complete_ns: Some(30),
                output: Some(Output::Cas { success: true, current: Some(6) }),
            },
            Operation { client: 3, key: 1, input: Input::Delete, invoke_ns: 12, complete_ns: None, output: None },
        ];
        let mut out = Vec::new();
        write_json_lines(&history, 99, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0], r#"{"client":1,"type":"invoke","f":"write","key":0,"value":5,"time_ns":10}"#);
        assert_eq!(lines[1], r#"{"client":3,"type":"invoke","f":"delete","key":1,"value":null,"time_ns":12}"#);
        assert_eq!(lines[4], r#"{"client":2,"type":"ok","f":"cas","key":0,"value":[true,6],"time_ns":30}"#);
        assert_eq!(lines[5], r#"{"client":3,"type":"info","f":"delete","key":1,"value":null,"time_ns":99}"#);
    }

    #[test]
    fn an_unknown_outcome_closes_before_its_client_moves_on() {
        let history = vec![
            Operation { client: 1, key: 0, input: Input::Write(5), invoke_ns: 10, complete_ns: None, output: None },
            Operation {
                client: 1,
                key: 0,
                input: Input::Read,
                invoke_ns: 40,
                complete_ns: Some(50),
                output: Some(Output::Read(Some(5))),
            },
        ];
        let mut out = Vec::new();
        write_json_lines(&history, 99, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let kinds: Vec<&str> =
            text.lines().map(|line| line.split("\"type\":\"").nth(1).unwrap().split('"').next().unwrap()).collect();
        assert_eq!(kinds, ["invoke", "info", "invoke", "ok"]);
        assert!(text.lines().nth(1).unwrap().ends_with("\"time_ns\":40}"));
    }
}
