//! One definition of each status number: `rasputin::client::STATUSES`.
//! The C header (generated from this crate's enum), Python (through the
//! client crate), Java's closed client and Go's constants must all agree
//! with it; this test fails when any of them drifts.

use std::collections::BTreeMap;
use std::path::Path;

use rasputin_core::client::{STATUSES, STATUS_CLOSED, STATUS_NOT_FOUND};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// `NAME = number` pairs found on lines that start with `prefix`.
fn assignments(text: &str, prefix: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix(prefix))
        .filter_map(|rest| {
            let (name, value) = rest.split_once('=')?;
            let name = name.split_whitespace().next()?.to_string();
            Some((name, value.trim().trim_end_matches([',', ';']).trim().to_string()))
        })
        .collect()
}

fn c_name(name: &str) -> String {
    if name == "OK" {
        "OK".to_string()
    } else {
        format!("ERROR_{name}")
    }
}

/// "INVALID_ARGUMENT" → "InvalidArgument".
fn go_name(name: &str) -> String {
    name.split('_').map(|word| word[..1].to_string() + &word[1..].to_lowercase()).collect()
}

#[test]
fn the_c_header_numbers_every_status_as_the_client_does() {
    let header = assignments(&read("include/rasputin.h"), "RASPUTIN_");
    for (name, number) in STATUSES.iter().filter(|(_, number)| *number < STATUS_CLOSED) {
        let found = header.get(&c_name(name));
        assert_eq!(
            found,
            Some(&number.to_string()),
            "include/rasputin.h: RASPUTIN_{} should be {number}",
            c_name(name)
        );
    }
}

#[test]
fn java_numbers_a_closed_client_as_the_client_does() {
    let java =
        assignments(&read("bindings/java/src/main/java/io/rasputin/RasputinClient.java"), "public static final int ");
    assert_eq!(java.get("STATUS_CLOSED"), Some(&STATUS_CLOSED.to_string()), "RasputinClient.STATUS_CLOSED drifted");
}

#[test]
fn go_takes_every_status_from_the_header_or_numbers_it_as_the_client_does() {
    let go = assignments(&read("bindings/go/rasputin.go"), "Status");
    for (name, number) in STATUSES.iter().filter(|(name, _)| *name != "OK") {
        let constant = go_name(name);
        let value = go.get(&constant).unwrap_or_else(|| panic!("bindings/go/rasputin.go has no Status{constant}"));
        let expected = if *number < STATUS_CLOSED {
            format!("Status = C.RASPUTIN_{}", c_name(name))
        } else {
            format!("Status = {number}")
        };
        // `assignments` splits at '=', so put the type back in front.
        assert_eq!(format!("Status = {value}"), expected, "bindings/go/rasputin.go: Status{constant}");
    }
    assert!(STATUS_NOT_FOUND > STATUS_CLOSED, "the Go-only statuses follow the shared ones");
}
