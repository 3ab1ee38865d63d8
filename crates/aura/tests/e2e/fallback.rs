//! The no-cgroup fallback as its users run it (`AURA_SUPERVISOR__BACKEND=process_group`): the daemon is
//! the subreaper of its jobs, so a torture tree — 200 children, a TERM-ignoring member, a `setsid` +
//! double-fork daemon — leaves nothing behind on cancel or after a daemon SIGKILL and restart, and
//! orphans that end are reaped.

use super::*;

const FALLBACK: (&str, &str) = ("AURA_SUPERVISOR__BACKEND", "process_group");

/// 200 children, a member that ignores SIGTERM, a `setsid` daemon that double-forks: 204 processes with
/// the main one, all named `name` (bash's `exec -a`), so the test finds them wherever they went.
fn torture(name: &str) -> JobSpec {
    let script = format!(
        "for i in $(seq 200); do (exec -a {name} sleep 300) & done; \
         (trap '' TERM; exec -a {name} sleep 300) & \
         setsid bash -c '( (exec -a {name} sleep 300) & ); exec -a {name} sleep 300' & \
         exec -a {name} sleep 300"
    );
    let mut job = spec("bash", &["-c", &script]);
    job.stop = "TERM:2s".parse::<StopSequence>().unwrap();
    job
}

/// Live processes whose command line starts with `name`.
fn named(name: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with(name.as_bytes()))
                && alive(p)
        })
        .collect()
}

fn unique(what: &str) -> String {
    format!("{what}{}x{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn wait_for_count(name: &str, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = named(name);
        if pids.len() >= n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "the tree reached only {} of {n} processes",
            pids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_torture_tree_leaves_nothing_on_the_fallback() {
    let daemon = Daemon::start(&[FALLBACK]);
    let client = daemon.client();
    let name = unique("torture");
    let id = submit(&client, &torture(&name)).await;
    let pids = wait_for_count(&name, 204).await;
    // The orphans are the daemon's now, not init's.
    let adopted = pids
        .iter()
        .filter(|&&p| proc_entry(p).is_some_and(|e| e.ppid == daemon.pid()))
        .count();
    assert!(adopted >= 2, "{adopted} processes adopted by the daemon");
    let view = wait_running(&client, id, 204).await;
    assert!(
        view.live.as_ref().is_some_and(|l| l.processes >= 204),
        "{view:?}"
    );
    let t0 = Instant::now();
    client.cancel(id).await.unwrap();
    let gone = all_gone_within(&pids, Duration::from_secs(2)).await;
    let left = pids.iter().filter(|p| alive(**p)).count();
    assert!(gone, "{left} of {} alive 2 s after cancel", pids.len());
    eprintln!(
        "fallback: {} processes gone {:?} after cancel",
        pids.len(),
        t0.elapsed()
    );
    let view = wait_done(&client, id).await;
    assert_eq!(outcome(&view), &Outcome::Cancelled);
    assert!(
        all_reaped_within(daemon.pid(), Duration::from_secs(2)).await,
        "zombies under the daemon: {:?}",
        zombie_children(daemon.pid())
    );
}

async fn all_reaped_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if zombie_children(pid).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    zombie_children(pid).is_empty()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torture_tree_does_not_outlive_a_daemon_sigkill_on_the_fallback() {
    let mut daemon = Daemon::start(&[FALLBACK]);
    let client = daemon.client();
    let name = unique("crash");
    let id = submit(&client, &torture(&name)).await;
    let pids = wait_for_count(&name, 204).await;
    wait_running(&client, id, 1).await;
    daemon.signal(rustix::process::Signal::KILL);
    daemon.wait_exit();
    // Without its subreaper the orphans are init's (or the nearest subreaper's) now.
    let survivors = pids.iter().filter(|p| alive(**p)).count();
    assert!(survivors >= 200, "only {survivors} outlived the daemon");
    let restarted = Instant::now();
    daemon.spawn();
    let gone = all_gone_within(
        &pids,
        Duration::from_secs(2).saturating_sub(restarted.elapsed()),
    )
    .await;
    let left = pids.iter().filter(|p| alive(**p)).count();
    assert!(
        gone,
        "{left} of {} processes survived the restart",
        pids.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_zombie_under_the_daemon_after_a_thousand_double_forking_jobs() {
    let daemon = Daemon::start(&[FALLBACK, ("AURA_MAX_CONCURRENT", "4")]);
    let client = daemon.client();
    // Half leave an orphan that their tree's end kills, half one that ends on its own first.
    let jobs = [
        spec("sh", &["-c", "( setsid sleep 5 & ); exit 0"]),
        spec("sh", &["-c", "( true & ); ( setsid true & ); sleep 0.01"]),
    ];
    let mut ids = Vec::new();
    for i in 0..1000 {
        ids.push(submit(&client, &jobs[i % 2]).await);
    }
    for id in ids {
        let view = wait_done(&client, id).await;
        assert!(outcome(&view).is_success(), "{view:?}");
    }
    let reaped = all_reaped_within(daemon.pid(), Duration::from_secs(2)).await;
    let zombies = zombie_children(daemon.pid());
    assert!(
        reaped,
        "{} zombies under the daemon, e.g. {:?}",
        zombies.len(),
        &zombies[..zombies.len().min(5)]
    );
    // And none of the killed orphans lives on.
    let orphans: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&p| proc_entry(p).is_some_and(|e| e.state != 'Z' && e.ppid == daemon.pid()))
        .collect();
    assert!(
        orphans.is_empty(),
        "orphans alive under the daemon: {orphans:?}"
    );
}
