//! The command line: a bad value of a flag or `PYSTRAND_*` variable, or a
//! port already in use, exits with status 2 and a one-line error naming the
//! flag or variable (never a panic); the variables override the flags;
//! `--help` lists every flag with its default.

mod common;

use std::net::TcpListener;

use common::*;

fn assert_refused(args: &[&str], env: &[(&str, &str)], names: &str) {
    let out = run_to_exit(args, env);
    let what = format!("{args:?} with {env:?}");
    assert_eq!(
        out.code,
        Some(2),
        "{what}: exit status; stderr: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "{what} panicked: {}",
        out.stderr
    );
    // Log lines ("[time LEVEL] ...") may precede it; the error is one line.
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('['))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: not a one-line error: {:?}",
        out.stderr
    );
    assert!(
        lines[0].contains("error"),
        "{what}: not an error: {:?}",
        lines[0]
    );
    assert!(
        lines[0].contains(names),
        "{what}: the error does not name {names}: {:?}",
        lines[0]
    );
}

#[test]
fn bad_flag_values_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--ws-port", "70000"], "--ws-port"),
        (&["--ws-port", "abc"], "--ws-port"),
        (&["--tcp-port", "-1"], "--tcp-port"),
        (&["--connect-timeout", "abc"], "--connect-timeout"),
        (&["--connect-timeout", "0"], "--connect-timeout"),
        (&["--connect-timeout", "-2"], "--connect-timeout"),
        (&["--queue-size", "many"], "--queue-size"),
        (&["--max-message-size", "1MB"], "--max-message-size"),
        (&["--max-outbound-bytes", "10"], "--max-outbound-bytes"),
        (&["--host", "nowhere"], "--host"),
        (&["--backend-host", "999.1.1.1"], "--backend-host"),
        (&["--log-level", "loud"], "--log-level"),
        (&["--no-such-flag", "1"], "--no-such-flag"),
    ];
    for (args, names) in cases {
        assert_refused(args, &[], names);
    }
}

#[test]
fn bad_environment_values_exit_2_naming_the_variable() {
    let cases: &[(&str, &str)] = &[
        ("PYSTRAND_WS_PORT", "abc"),
        ("PYSTRAND_WS_PORT", "70000"),
        ("PYSTRAND_TCP_PORT", "abc"),
        ("PYSTRAND_QUEUE_SIZE", "-1"),
        ("PYSTRAND_QUEUE_SIZE", "lots"),
    ];
    for &(name, value) in cases {
        assert_refused(&["--host", "127.0.0.1"], &[(name, value)], name);
    }
}

#[test]
fn a_port_in_use_exits_2_naming_the_flag() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    assert_refused(
        &["--host", "127.0.0.1", "--ws-port", &port, "--tcp-port", "0"],
        &[],
        "--ws-port",
    );
    assert_refused(
        &[
            "--host",
            "127.0.0.1",
            "--ws-port",
            "0",
            "--backend-host",
            "127.0.0.1",
            "--tcp-port",
            &port,
        ],
        &[],
        "--tcp-port",
    );
}

#[test]
fn a_port_in_use_given_by_a_variable_names_the_variable() {
    // The user never typed --ws-port: the error must point at what they set.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    assert_refused(
        &["--host", "127.0.0.1", "--tcp-port", "0"],
        &[("PYSTRAND_WS_PORT", &port)],
        "PYSTRAND_WS_PORT",
    );
    assert_refused(
        &["--host", "127.0.0.1", "--ws-port", "0"],
        &[("PYSTRAND_TCP_PORT", &port)],
        "PYSTRAND_TCP_PORT",
    );
}

#[test]
fn environment_variables_override_the_flags() {
    // The flags name a port in use; the variables say 0, and win.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let busy = port.to_string();
    let broker = Broker::start_with_env(
        &["--ws-port", &busy, "--tcp-port", &busy],
        &[("PYSTRAND_WS_PORT", "0"), ("PYSTRAND_TCP_PORT", "0")],
    );
    assert_ne!(broker.ws.port(), port);
    assert_ne!(broker.backend.port(), port);
    let mut backend = Backend::connect(&broker);
    join(&broker, &mut backend, "c", "room");
}

/// The help text's entries, one per flag, whitespace normalised.
fn help_entries(help: &str) -> Vec<String> {
    let options = help
        .split_once("Options:")
        .map_or_else(|| panic!("no Options: section in {help}"), |(_, o)| o);
    let mut entries: Vec<String> = Vec::new();
    for line in options.lines() {
        let text = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.starts_with("--") {
            entries.push(text);
        } else if let Some(last) = entries.last_mut() {
            if !text.is_empty() {
                last.push(' ');
                last.push_str(&text);
            }
        }
    }
    entries
}

/// Whether `entry` says "default <value>" (and not a longer value).
fn says_default(entry: &str, value: &str) -> bool {
    let needle = format!("default {value}");
    entry.match_indices(&needle).any(|(at, _)| {
        let rest = &entry[at + needle.len()..];
        let mut chars = rest.chars();
        match chars.next() {
            None => true,
            Some(c) if c.is_ascii_alphanumeric() => false,
            Some('.') => !chars.next().is_some_and(|c| c.is_ascii_digit()),
            Some(_) => true,
        }
    })
}

#[test]
fn help_lists_every_flag_with_its_default() {
    let out = run_to_exit(&["--help"], &[]);
    assert_eq!(
        out.code,
        Some(0),
        "--help exit status; stderr: {}",
        out.stderr
    );
    let entries = help_entries(&out.stdout);
    let entry = |flag: &str| {
        entries
            .iter()
            .find(|e| e.split_whitespace().next() == Some(flag))
            .unwrap_or_else(|| panic!("--help does not list {flag}:\n{}", out.stdout))
    };
    let documented = [
        ("--ws-port", "8080"),
        ("--tcp-port", "8081"),
        ("--host", "0.0.0.0"),
        ("--backend-host", "127.0.0.1"),
        ("--queue-size", "1000"),
        ("--connect-timeout", "5"),
        ("--max-message-size", "1048576"),
        ("--max-outbound-bytes", "4194304"),
        ("--log-level", "info"),
    ];
    for (flag, default) in documented {
        let e = entry(flag);
        assert!(
            says_default(e, default),
            "{flag} does not say 'default {default}': {e}"
        );
    }
    // Every other flag the usage line names has a default in its entry too.
    let usage = out.stdout.lines().next().unwrap_or("");
    for word in usage.split(['[', ' ']) {
        if word.starts_with("--") && word != "--help" {
            let e = entry(word);
            assert!(
                e.contains("default"),
                "{word} has no default in --help: {e}"
            );
        }
    }
    // The variables are documented.
    for var in [
        "PYSTRAND_WS_PORT",
        "PYSTRAND_TCP_PORT",
        "PYSTRAND_QUEUE_SIZE",
    ] {
        assert!(out.stdout.contains(var), "--help does not mention {var}");
    }
}
