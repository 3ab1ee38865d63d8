//! Memory truth, against a live daemon: a running job is charged what it really uses, so a queued job
//! that fits the reservations but not the memory really left waits, and `aura show` says why with both
//! figures.

use super::*;

use super::memory::hog;

/// Waits until job `id` is seen using more than `bytes`, then for the guard thread (one tick a second) to
/// have reported it to admission.
async fn wait_using(client: &Client, id: JobId, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = client.get(id).await.unwrap();
        if view
            .live
            .as_ref()
            .and_then(|l| l.memory_used())
            .is_some_and(|u| u > bytes)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the hog never grew: {view:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_over_its_request_holds_back_what_reservations_would_admit() {
    // Gigabytes of allocation: not while a test that sets thresholds from the memory available now runs.
    let _turn = super::memory::HOST_PRESSURE.lock().await;
    // 6 GiB for jobs: A reserves 1 GiB and uses 2 GiB; B asks 4.5 GiB — 5 GiB is unreserved, but only
    // 4 GiB once A is charged what it uses.
    let daemon = Daemon::start(&[("AURA_ADMISSION__MEMORY", "6GiB")]);
    let client = daemon.client();
    let mut a = hog("2G", 120);
    a.resources.memory = Some("1GiB".parse().unwrap());
    // A stated request is also the hard limit unless `memory_max` says otherwise.
    a.resources.memory_max = Some("4GiB".parse().unwrap());
    let a = submit(&client, &a).await;
    wait_using(&client, a, 1900 << 20).await;
    let mut b = spec("true", &[]);
    b.resources.memory = Some("4608MiB".parse().unwrap());
    let b = submit(&client, &b).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = client.get(b).await.unwrap();
    assert!(
        matches!(view.job.state, JobState::Queued { .. }),
        "admitted on reservations alone: {:?}",
        view.job.state
    );
    let text = stdout(&daemon.cli(&["show", &b.to_string()]));
    assert!(text.contains("actually free"), "{text}");
    assert!(text.contains("over their reservations"), "{text}");

    // A ends: B starts.
    client.cancel(a).await.unwrap();
    let view = wait_done(&client, b).await;
    assert!(outcome(&view).is_success());
}

/// A running job of a kind using more than it reserved raises the next request of that kind at once,
/// without waiting for five finished runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_overrun_teaches_its_kind_at_once() {
    let _turn = super::memory::HOST_PRESSURE.lock().await;
    let daemon = Daemon::start(&[("AURA_ADMISSION__DEFAULT_MEMORY_REQUEST", "1GiB")]);
    let client = daemon.client();
    let mut a = hog("1536M", 60);
    a.labels.insert("kind".into(), "grower".into());
    let a = submit(&client, &a).await;
    wait_using(&client, a, 1400 << 20).await;
    let mut b = spec("true", &[]);
    b.labels.insert("kind".into(), "grower".into());
    let b = client.submit(&b).await.unwrap().job;
    let request = b.memory_request.expect("a request");
    assert!(
        matches!(
            &request.source,
            aura_model::RequestSource::Overrun { kind, observed_bytes }
                if kind == "grower" && *observed_bytes > (1400 << 20)
        ),
        "{request:?}"
    );
    assert!(request.bytes.bytes() > (1400 << 20) * 6 / 5, "{request:?}");
    client.cancel(a).await.unwrap();
}

/// A job that writes a file and then holds little memory ends with `End=` near what it used, not the
/// page cache its file left charged to its cgroup, which is reported apart.
#[tokio::test(flavor = "multi_thread")]
async fn the_end_figure_is_the_jobs_memory_not_its_page_cache() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let id = submit(
        &client,
        &spec(
            "sh",
            &[
                "-c",
                "dd if=/dev/zero of=big bs=1M count=300 status=none; sleep 1.5; rm -f big",
            ],
        ),
    )
    .await;
    let view = wait_done(&client, id).await;
    let JobState::Finished(f) = &view.job.state else {
        unreachable!()
    };
    assert!(outcome(&view).is_success());
    let end = f.accounting.memory_end.expect("sampled during the sleep");
    assert!(
        end.bytes() < (100 << 20),
        "End is the job's memory: {:?}",
        f.accounting
    );
    if f.accounting.memory_source == Some(aura_model::MemorySource::CgroupPeak) {
        // The file's pages were charged to the job's cgroup; deleting the file gave most of them back,
        // so only the figure's presence and honesty are checked.
        assert!(f.accounting.page_cache_end.is_some(), "{:?}", f.accounting);
    }
}
