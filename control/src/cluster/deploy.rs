//! Turning a [`TaskDeployment`] into a running subtask on a TaskManager: the job graph
//! is rebuilt from its spec, and the subtask's rings are opened by name in /dev/shm, so
//! that two TaskManagers on one host exchange records exactly as slots of one process do.
//! A channel whose other end is on another host is an in-process ring instead, whose
//! other half goes to the TaskManager's network agent: the task cannot tell.

use super::TaskDeployment;
use crate::graph::{EdgePartition, JobGraph};
use crate::minicluster::Deployment;
use spate_dataplane::net::NetHandle;
use spate_dataplane::operator::SubtaskInfo;
use spate_dataplane::ring::{Consumer, Producer, Ring, SHM_DIR};
use std::net::ToSocketAddrs;
use std::time::Duration;

/// How long a subtask waits for the other side of a ring to create it.
pub const RING_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `id` is a job id as the JobManager makes them (32 lowercase hex digits).
pub fn valid_job_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Prefix of every ring file a TaskManager creates.
pub const RING_FILE_PREFIX: &str = "spate-";

/// Prefix of every ring file of a job (ids are checked with [`valid_job_id`] first).
pub fn ring_prefix(job_id: &str) -> String {
    format!("{RING_FILE_PREFIX}{}-", job_id.get(..16).unwrap_or(job_id))
}

/// The ring of edge `edge` from upstream subtask `up` to downstream subtask `down`.
pub fn ring_name(job_id: &str, attempt: u32, edge: usize, up: usize, down: usize) -> String {
    format!("{}a{attempt}-e{edge}-{up}-{down}", ring_prefix(job_id))
}

/// Removes the job's ring files left behind (by a process that died holding them).
pub fn remove_rings(job_id: &str) -> usize {
    if !valid_job_id(job_id) {
        return 0;
    }
    let prefix = ring_prefix(job_id);
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix)
            && std::fs::remove_file(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// The job graph a deployment belongs to, resolved as the JobManager resolved it.
pub fn job_graph(d: &TaskDeployment) -> Result<JobGraph, String> {
    d.spec
        .job_graph(d.default_parallelism.max(1) as usize, d.chaining)
}

/// Builds the subtask's deployment: its chain and its rings, opened by name (or, for
/// channels to other hosts, made here and joined to `net`).
pub fn build(
    d: &TaskDeployment,
    graph: &JobGraph,
    net: &NetHandle,
    settings: spate_dataplane::task::TaskSettings,
) -> Result<Deployment, String> {
    if !valid_job_id(&d.task.job_id) {
        return Err(format!("invalid job id {:?}", d.task.job_id));
    }
    let v = d.task.vertex as usize;
    let s = d.task.subtask as usize;
    let vertex = graph
        .vertices
        .get(v)
        .ok_or_else(|| format!("the job has no vertex {v}"))?;
    if s >= vertex.parallelism {
        return Err(format!("vertex {v} has no subtask {s}"));
    }
    let ring_size = usize::try_from(d.ring_size).map_err(|_| "ring size too large")?;
    let open = |edge: usize, up: usize, down: usize| {
        let name = ring_name(&d.task.job_id, d.task.attempt, edge, up, down);
        Ring::open_shm(&name, ring_size, RING_OPEN_TIMEOUT)
            .map_err(|e| format!("opening ring {name}: {e}"))
    };
    let remote = |edge: usize, up: usize, down: usize| {
        d.remote
            .iter()
            .find(|r| (r.edge as usize, r.up as usize, r.down as usize) == (edge, up, down))
    };
    // Where a remote channel's peer is. The task gets one half of an in-process ring and
    // the agent the other; a receiving ring is twice the size of a sending one, so that
    // credit-based flow control (which holds back room for a frame's padding) carries
    // the largest frame the sending task can write.
    let remote_ring = |r: &super::RemoteChannel| {
        // Agents listen on IPv4 (0.0.0.0): an IPv4 address of the name first.
        let addrs: Vec<std::net::SocketAddr> = r
            .peer_address
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve TaskManager address {}: {e}", r.peer_address))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("TaskManager address {} resolves to nothing", r.peer_address))?;
        Ok::<std::net::SocketAddr, String>(addr)
    };
    let producer = |edge: usize, up: usize, down: usize| -> Result<Producer, String> {
        match remote(edge, up, down) {
            Some(r) => {
                let addr = remote_ring(r)?;
                let (p, c) = Ring::anonymous(ring_size).map_err(|e| e.to_string())?;
                if !net.open_out(r.peer_node, addr, r.channel, c) {
                    return Err("the network agent has stopped".into());
                }
                Ok(p)
            }
            None => open(edge, up, down)?.producer().map_err(|e| e.to_string()),
        }
    };
    let consumer = |edge: usize, up: usize, down: usize| -> Result<Consumer, String> {
        match remote(edge, up, down) {
            Some(r) => {
                let addr = remote_ring(r)?;
                let size = ring_size
                    .checked_mul(2)
                    .filter(|&n| n <= spate_dataplane::ring::MAX_CAPACITY)
                    .ok_or("taskmanager.memory.ring-size too large for a remote channel")?;
                let (p, c) = Ring::anonymous(size).map_err(|e| e.to_string())?;
                if !net.open_in(r.peer_node, addr, r.channel, p) {
                    return Err("the network agent has stopped".into());
                }
                Ok(c)
            }
            None => open(edge, up, down)?.consumer().map_err(|e| e.to_string()),
        }
    };
    let mut outputs = Vec::new();
    let mut inputs = Vec::new();
    for (ei, e) in graph.edges.iter().enumerate() {
        if e.from == v {
            let targets: Vec<usize> = match e.partition {
                EdgePartition::Forward => vec![s],
                _ => (0..graph.vertices[e.to].parallelism).collect(),
            };
            let mut producers = Vec::new();
            for t in targets {
                producers.push(producer(ei, s, t)?);
            }
            outputs.push((e.partition.clone(), e.side.clone(), producers));
        }
        if e.to == v {
            let sources: Vec<usize> = match e.partition {
                EdgePartition::Forward => vec![s],
                _ => (0..graph.vertices[e.from].parallelism).collect(),
            };
            for u in sources {
                inputs.push((e.input, consumer(ei, u, s)?));
            }
        }
    }
    Ok(Deployment {
        vertex: v,
        name: format!("{} ({}/{})", vertex.name, s + 1, vertex.parallelism),
        info: SubtaskInfo {
            index: s,
            parallelism: vertex.parallelism,
        },
        chain: vertex
            .nodes
            .iter()
            .map(|&n| graph.stream.nodes[n].clone())
            .collect(),
        outputs,
        inputs,
        metrics: std::sync::Arc::default(),
        settings,
        checkpointing: None,
        restore: Default::default(),
        max_parallelism: graph.max_parallelism,
    })
}

/// Which host this process runs on, as far as sharing memory goes: the kernel's boot id
/// and this process's network and mount namespaces. Two TaskManagers with the same key
/// share /dev/shm; namespaces joined by veth count as different hosts.
pub fn host_key() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let ns = |n: &str| {
        std::fs::read_link(format!("/proc/self/ns/{n}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let (net, mnt) = (ns("net"), ns("mnt"));
    if boot.is_empty() || net.is_empty() || mnt.is_empty() {
        // Unknown: this process counts as a host of its own (records go over TCP).
        return format!("process-{}-{}", std::process::id(), super::new_id());
    }
    format!("{boot}/{net}/{mnt}")
}
