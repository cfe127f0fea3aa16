//! The loader on a host larger than this one: the object is loaded (not
//! attached, nothing runs) as for a host with 64 possible CPUs and 64
//! workers, one per CPU. And the `flow` answer of the control socket for
//! several `net.listen` addresses.

use aya::maps::{Map, MapInfo, PerCpuValues};

use super::*;
use crate::prereq::{require, Need};

/// The simulated host: CPUs 0..64, one worker on each.
const SIMULATED_CPUS: u32 = 64;

/// The kernel's description of the map `name` of `ebpf`.
fn map_info(ebpf: &Ebpf, name: &str) -> MapInfo {
    let data = match ebpf.map(name) {
        Some(
            Map::Array(d)
            | Map::PerCpuArray(d)
            | Map::CpuMap(d)
            | Map::ReusePortSockArray(d)
            | Map::HashMap(d),
        ) => d,
        other => panic!("map {name}: {other:?}"),
    };
    data.info().unwrap_or_else(|e| panic!("map {name}: {e}"))
}

fn loaded_for_64_cpus() -> (Ebpf, Vec<u32>) {
    require(&[Need::Root]);
    let mut ebpf = load_object(SIMULATED_CPUS).unwrap_or_else(|e| panic!("{e}"));
    let cpus: Vec<u32> = (0..SIMULATED_CPUS).collect();
    let key = FlowHashKey { k0: 7, k1: 9 };
    setup_workers(&mut ebpf, &[443], &cpus, &key).unwrap_or_else(|e| panic!("{e}"));
    (ebpf, cpus)
}

#[test]
fn maps_are_sized_for_every_cpu_and_every_worker() {
    let (ebpf, cpus) = loaded_for_64_cpus();
    let sizes = |name: &str| {
        let i = map_info(&ebpf, name);
        (i.max_entries(), i.value_size())
    };
    // Indexed by CPU id: one entry per possible CPU.
    assert_eq!(sizes(names::CPUMAP).0, SIMULATED_CPUS);
    assert_eq!(sizes(names::SOCKETS).0, SIMULATED_CPUS);
    // Indexed by worker slot: every worker up to MAX_WORKERS.
    assert_eq!(sizes(names::CPUS), (MAX_WORKERS, 4));
    assert_eq!(sizes(names::STEERED), (MAX_WORKERS, 8));
    assert_eq!(
        sizes(names::STATS),
        (1, std::mem::size_of::<SteeringStats>() as u32)
    );
    assert_eq!(sizes(names::FLOW_KEY), (1, 16));
    // The worker list and the key as the XDP program reads them.
    let list: Array<_, u32> = Array::try_from(ebpf.map(names::CPUS).expect("CPUS")).expect("array");
    for (slot, &cpu) in cpus.iter().enumerate() {
        assert_eq!(list.get(&(slot as u32), 0).expect("CPUS entry"), cpu);
    }
    let config: Array<_, u32> =
        Array::try_from(ebpf.map(names::CONFIG).expect("CONFIG")).expect("array");
    assert_eq!(
        config.get(&CONFIG_WORKERS, 0).expect("CONFIG"),
        SIMULATED_CPUS
    );
    let key: Array<_, [u64; 2]> =
        Array::try_from(ebpf.map(names::FLOW_KEY).expect("FLOW_KEY")).expect("array");
    assert_eq!(key.get(&0, 0).expect("FLOW_KEY"), [7, 9]);
}

#[test]
fn every_worker_of_64_has_its_own_steering_counter() {
    let (mut ebpf, cpus) = loaded_for_64_cpus();
    let counters = SteeringCounters::take(&mut ebpf, cpus).unwrap_or_else(|e| panic!("{e}"));
    let real_cpus = aya::util::nr_cpus().expect("possible CPUs");
    // What the XDP program would have counted: on each real CPU, slot n
    // steered n + 1 segments.
    {
        let mut maps = counters.maps.lock().expect("lock");
        let steered = &mut maps[0].steered;
        for slot in 0..SIMULATED_CPUS {
            let values = PerCpuValues::try_from(vec![u64::from(slot) + 1; real_cpus])
                .expect("per-CPU values");
            steered.set(slot, values, 0).expect("STEERED set");
        }
    }
    for worker in 0..SIMULATED_CPUS as usize {
        let column = counters.worker_counters(worker);
        let steered = column
            .iter()
            .find(|(name, _)| *name == "steer_xdp_steered_here")
            .map(|&(_, v)| v);
        assert_eq!(
            steered,
            Some((worker as u64 + 1) * real_cpus as u64),
            "worker {worker}"
        );
    }
    // No bucket for "other" CPUs, and a worker past the list has zeros.
    let names: Vec<&str> = counters.worker_counters(0).iter().map(|c| c.0).collect();
    assert!(names.iter().all(|n| !n.contains("other")), "{names:?}");
    assert!(counters
        .worker_counters(SIMULATED_CPUS as usize)
        .iter()
        .all(|&(_, v)| v == 0));
}

/// The flow hash of two workers (slot n on CPU n) steering `listen`.
fn flow_control(listen: &[&str]) -> (SteeringControl, FlowHashKey) {
    let key = FlowHashKey { k0: 7, k1: 9 };
    let listen = listen.iter().map(|a| a.parse().expect("address")).collect();
    let flow = FlowWorkers {
        key,
        cpus: vec![0, 1],
        listen,
    };
    let control = SteeringControl {
        xdp_link: None,
        flow: Some(flow),
    };
    (control, key)
}

#[test]
fn flow_hashes_with_the_port_of_the_listen_address_it_names() {
    let (control, key) = flow_control(&["10.0.0.1:8443", "10.0.0.1:8444"]);
    for client_port in 40000..40040u16 {
        let client = format!("10.0.0.2:{client_port}");
        for (server, port) in [("", 8443), ("=10.0.0.1", 8443), ("=10.0.0.1:8444", 8444)] {
            let flow = FlowKey::v4([10, 0, 0, 2], [10, 0, 0, 1], client_port, port);
            let slot = worker_slot(&flow, &key, 2).expect("two workers");
            assert_eq!(
                control.flow_worker(&format!("{client}{server}")),
                Ok(format!(
                    "{client} -> 10.0.0.1:{port}: worker {slot} cpu {slot}\n"
                )),
                "{client}{server}"
            );
        }
    }
}

#[test]
fn flow_refuses_a_port_that_is_not_listened_on() {
    let (control, _) = flow_control(&["10.0.0.1:8443", "10.0.0.1:8444"]);
    let answer = control.flow_worker("10.0.0.2:40000=10.0.0.1:9999");
    assert_eq!(answer, Err(FlowError::NotSteered(9999)));
}
