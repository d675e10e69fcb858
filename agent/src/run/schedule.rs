//! The schedule: every target × port × family probed at its interval, with jitter so a fleet
//! does not probe in lockstep, a floor on the interval per destination (politeness), and a cap on
//! probes in flight. Each result goes to the spool and wakes the uplink.

use super::config::TargetConfig;
use super::Shared;
use crate::probe::{self, ProbeOptions, ProbeTarget};
use egresswatch_wire::Family;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

pub async fn run(
    targets: Vec<TargetConfig>,
    options: ProbeOptions,
    floor: Duration,
    concurrency: usize,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut series = tokio::task::JoinSet::new();
    for target in targets {
        let interval = target.interval.max(floor);
        for port in &target.ports {
            for family in [Family::Ipv4, Family::Ipv6] {
                let probe_target = ProbeTarget {
                    host: target.host.clone(),
                    port: *port,
                    family,
                    level: target.level,
                };
                series.spawn(probe_series(
                    probe_target,
                    interval,
                    options.clone(),
                    permits.clone(),
                    shared.clone(),
                ));
            }
        }
    }
    let _ = shutdown.wait_for(|stop| *stop).await;
    series.abort_all();
}

async fn probe_series(
    target: ProbeTarget,
    interval: Duration,
    options: ProbeOptions,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
) {
    // Spread the first probes over one interval, so a restart is not a burst.
    let first = interval.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
    tokio::time::sleep(first).await;
    loop {
        let result = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            probe::probe(&target, &options).await
        };
        shared.record(result).await;
        let next = interval.mul_f64(rand::thread_rng().gen_range(0.9..1.1));
        tokio::time::sleep(next).await;
    }
}
