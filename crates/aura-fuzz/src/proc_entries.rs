//! The `proc_entries` target: what the no-cgroup fallback reads about job processes, whose bytes a job
//! chooses — the `/proc/PID/stat` line (its command name, up to any bytes) and its environment block (where
//! the `AURA_TREE` marker is looked up).

use aura_supervisor::fuzzing::{env_value, proc_stat};

/// The first byte picks a variable name (its length, then that many bytes); the rest is an environment
/// block and, as text, a command name inside a well-formed stat line and a stat line of its own.
pub fn proc_entries(data: &[u8]) {
    stat_lines(data);
    let (name, block) = match data.split_first() {
        Some((&n, rest)) => rest.split_at(usize::from(n % 16).min(rest.len())),
        None => (&[][..], data),
    };
    if let Ok(name) = std::str::from_utf8(name) {
        environment(block, name);
    }
}

/// Whatever the command name holds (spaces, `)`, newlines), the fields after it are read right; any text
/// at all parses or is refused without a panic.
fn stat_lines(data: &[u8]) {
    let comm = String::from_utf8_lossy(data);
    let _ = proc_stat(&comm);
    let line = format!(
        "4321 ({comm}) S 7 99 99 0 -1 4194304 100 0 0 0 11 13 0 0 20 0 1 0 424242 1000 50 18446744073709551615\n"
    );
    assert_eq!(
        proc_stat(&line),
        Some((b'S', 7, 99, 11, 13, 424_242)),
        "a command name of {comm:?} broke the stat line"
    );
}

/// The value found is the first `name=` entry's, whole and unchanged; none is found only where no entry
/// starts with `name=` or the first one is not UTF-8.
fn environment(block: &[u8], name: &str) {
    let found = env_value(block, name);
    let prefix = [name.as_bytes(), b"="].concat();
    let first = block
        .split(|&b| b == 0)
        .find(|entry| entry.starts_with(&prefix));
    match (found, first) {
        (Some(value), Some(entry)) => {
            assert_eq!(
                &entry[prefix.len()..],
                value.as_bytes(),
                "not the first entry's value"
            )
        }
        (Some(value), None) => panic!("found {value:?} for {name:?} in a block without it"),
        (None, Some(entry)) => assert!(
            std::str::from_utf8(&entry[prefix.len()..]).is_err(),
            "missed {entry:?}"
        ),
        (None, None) => {}
    }
}
