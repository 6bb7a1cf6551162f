//! Job graphs. The DataStream API builds a [`StreamGraph`] of operators; resolving
//! parallelism and chaining turns it into a [`JobGraph`] of vertices (chains of
//! operators that run as one task) joined by partitioned edges.
//!
//! Operators are Rust closures, so nodes carry *builders*: functions that build a
//! subtask's operator on the slot thread that will run it. Types are erased at the graph
//! level (`Box<dyn Any>`) and recovered when a chain is built, never per record.

use spate_dataplane::exchange::{Backpressure, OutputControl, Partition, RingOutput};
use spate_dataplane::operator::side::SideOutputs;
use spate_dataplane::operator::sink::SinkMetrics;
use spate_dataplane::operator::source::Source;
use spate_dataplane::operator::{BoxEmit, SubtaskInfo, Tee};
use spate_dataplane::record::Data;
use spate_dataplane::ring::{Consumer, Producer};
use spate_dataplane::slot::Task;
use spate_dataplane::task::{InputTask, Outputs, SourceTask};
use std::any::Any;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;

thread_local! {
    /// The side outputs of the operator being built on this slot thread, by tag: each a
    /// `BoxEmit<S>` into its ring output (set around each operator's builder).
    static SIDE_OUTPUTS: RefCell<Vec<(String, AnyBox, Arc<TypeOps>)>> = const { RefCell::new(Vec::new()) };
    /// The checkpoint id of the operator being built on this slot thread (its node id).
    static BUILDING_UID: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
    /// The timer of the operator being built (with latency markers on).
    static BUILDING_TIMER: RefCell<Option<Arc<spate_dataplane::operator::OperatorTimes>>> = const { RefCell::new(None) };
}

/// Hands the operator about to be built its timer (see [`take_building_timer`]).
pub fn set_building_timer(t: Option<Arc<spate_dataplane::operator::OperatorTimes>>) {
    BUILDING_TIMER.with(|b| *b.borrow_mut() = t);
}

/// The timer of the operator being built, taken: the chain link the builder makes
/// first measures its time per record.
pub fn take_building_timer() -> Option<Arc<spate_dataplane::operator::OperatorTimes>> {
    BUILDING_TIMER.with(|b| b.borrow_mut().take())
}

/// Names the operator about to be built (its node id), for [`take_building_uid`].
pub fn set_building_uid(uid: Option<u32>) {
    BUILDING_UID.with(|u| u.set(uid));
}

/// The checkpoint id of the operator being built, taken: the chain link the builder
/// makes first carries it (a builder that makes two links keeps state in the first).
pub fn take_building_uid() -> Option<u32> {
    BUILDING_UID.with(|u| u.take())
}

/// Hands the side outputs of the operator about to be built to its builder: tag, a
/// `BoxEmit<S>`, and the operations of `S`.
pub fn set_side_outputs(sides: Vec<(String, AnyBox, Arc<TypeOps>)>) {
    SIDE_OUTPUTS.with(|s| *s.borrow_mut() = sides);
}

/// Every side output of the operator being built that a consumer reads: for the
/// builders of process functions, which may send to any tag.
pub fn take_side_outputs() -> Result<SideOutputs, String> {
    SIDE_OUTPUTS.with(|s| {
        let mut sides = SideOutputs::default();
        for (tag, emit, ops) in s.borrow_mut().drain(..) {
            (ops.add_side)(&mut sides, &tag, emit)?;
        }
        Ok(sides)
    })
}

/// The side output `tag` of the operator being built (a `BoxEmit<S>`), if a consumer
/// reads it: for operator builders.
pub fn take_side_output<S: 'static>(tag: &str) -> Option<spate_dataplane::operator::BoxEmit<S>> {
    SIDE_OUTPUTS.with(|s| {
        let mut s = s.borrow_mut();
        let i = s.iter().position(|(t, _, _)| t == tag)?;
        let (_, any, _) = s.swap_remove(i);
        any.downcast::<spate_dataplane::operator::BoxEmit<S>>()
            .ok()
            .map(|b| *b)
    })
}

/// The largest parallelism of an operator.
pub const MAX_PARALLELISM: usize = 1024;

/// A type-erased box (a `BoxEmit<T>`, a `Box<dyn Source<T>>`, a `Partition<T>`...).
pub type AnyBox = Box<dyn Any>;

/// Why a graph cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// The job has no sink.
    #[error("the job has no sink: add print(), discard(), latency_sink() or another sink")]
    NoSink,
    /// An explicit forward edge between different parallelisms.
    #[error("forward partitioning from '{from}' (parallelism {up}) to '{to}' (parallelism {down}) needs equal parallelism")]
    ForwardParallelism {
        /// Upstream.
        from: String,
        /// Downstream.
        to: String,
        /// Upstream parallelism.
        up: usize,
        /// Downstream parallelism.
        down: usize,
    },
    /// A non-parallel operator given parallelism > 1.
    #[error("'{0}' is non-parallel: its parallelism must be 1")]
    NonParallel(String),
    /// Parallelism 0.
    #[error("'{0}': parallelism must be at least 1")]
    ZeroParallelism(String),
    /// Parallelism above the limit.
    #[error("'{0}': parallelism {1} is above the maximum of {MAX_PARALLELISM}")]
    TooParallel(String, usize),
    /// The job was declared wrongly (e.g. an event-time window without timestamps).
    #[error("{0}")]
    Declaration(String),
    /// Building an operator failed.
    #[error("building '{0}': {1}")]
    Build(String, String),
}

/// How an edge partitions, as declared.
#[derive(Clone)]
pub enum EdgePartition {
    /// Forward if parallelisms match, else rebalance.
    Default,
    /// To the same-index subtask.
    Forward,
    /// Round-robin.
    Rebalance,
    /// Random.
    Shuffle,
    /// To all.
    Broadcast,
    /// By key; holds the `KeyHashFn<T>` of the upstream's type.
    Hash(Arc<dyn Any + Send + Sync>),
}

impl EdgePartition {
    /// Flink's name for the partitioner.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Default => "DEFAULT",
            Self::Forward => "FORWARD",
            Self::Rebalance => "REBALANCE",
            Self::Shuffle => "SHUFFLE",
            Self::Broadcast => "BROADCAST",
            Self::Hash(_) => "HASH",
        }
    }
}

impl std::fmt::Debug for EdgePartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds a source for a subtask.
pub type SourceBuilder = Arc<dyn Fn(SubtaskInfo) -> Result<AnyBox, String> + Send + Sync>;
/// Builds an operator for a subtask, given its downstream; returns its input.
pub type OperatorBuilder = Arc<dyn Fn(SubtaskInfo, AnyBox) -> Result<AnyBox, String> + Send + Sync>;
/// Builds a sink for a subtask.
pub type SinkBuilder = Arc<dyn Fn(SubtaskInfo) -> Result<AnyBox, String> + Send + Sync>;

/// What a node builds.
#[derive(Clone)]
pub enum Build {
    /// A source (no inputs).
    Source(SourceBuilder),
    /// An operator.
    Operator(OperatorBuilder),
    /// A sink (no output).
    Sink(SinkBuilder),
    /// The union of its inputs (identity).
    Union,
    /// A two-input operator (always the head of its chain): `build` makes it in front
    /// of its downstream, `task` makes the task that decodes both inputs for it.
    TwoInput {
        /// Builds the operator, given its downstream.
        build: OperatorBuilder,
        /// Builds its task.
        task: TwoInputTaskFn,
    },
}

/// A task, or why it could not be built.
pub type TaskResult = Result<Box<dyn Task>, String>;
/// A ring output as the chain's emit and the task's control.
pub type RingOutputParts = (AnyBox, Rc<RefCell<dyn OutputControl>>);
type RingOutputFn =
    fn(Vec<Producer>, &EdgePartition, Backpressure, u32) -> Result<RingOutputParts, String>;
type SourceTaskFn = fn(String, AnyBox, AnyBox, Outputs, u32) -> TaskResult;
type InputTaskFn = fn(String, Vec<Consumer>, AnyBox, Outputs) -> TaskResult;
/// Builds a task headed by a two-input operator: its inputs (`(side, ring)`), the
/// operator (a `Box<dyn Emit2<A, B>>`) and its outputs.
pub type TwoInputTaskFn = fn(String, Vec<(usize, Consumer)>, AnyBox, Outputs) -> TaskResult;

/// Per record type: the typed pieces a deployment needs, as plain functions.
pub struct TypeOps {
    /// The record type's name.
    pub name: &'static str,
    ring_output: RingOutputFn,
    tee: fn(Vec<AnyBox>) -> Result<AnyBox, String>,
    source_task: SourceTaskFn,
    input_task: InputTaskFn,
    add_side: fn(&mut SideOutputs, &str, AnyBox) -> Result<(), String>,
}

impl std::fmt::Debug for TypeOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

fn down<T: 'static>(b: AnyBox, what: &str) -> Result<T, String> {
    b.downcast::<T>()
        .map(|b| *b)
        .map_err(|_| format!("internal: {what} has the wrong type"))
}

fn ring_output<T: Data>(
    producers: Vec<Producer>,
    p: &EdgePartition,
    bp: Backpressure,
    max_parallelism: u32,
) -> Result<(AnyBox, Rc<RefCell<dyn OutputControl>>), String> {
    let partition = match p {
        EdgePartition::Default | EdgePartition::Forward => Partition::Forward,
        EdgePartition::Rebalance => Partition::Rebalance,
        EdgePartition::Shuffle => Partition::Shuffle,
        EdgePartition::Broadcast => Partition::Broadcast,
        EdgePartition::Hash(f) => Partition::Hash(
            f.downcast_ref::<spate_dataplane::exchange::KeyHashFn<T>>()
                .cloned()
                .ok_or("internal: key hash of the wrong type")?,
        ),
    };
    let (emit, ctl) = RingOutput::<T>::new(producers, partition, bp)
        .with_max_parallelism(max_parallelism)
        .into_shared();
    Ok((Box::new(Box::new(emit) as BoxEmit<T>), ctl))
}

fn tee<T: Data>(outs: Vec<AnyBox>) -> Result<AnyBox, String> {
    let mut v = Vec::with_capacity(outs.len());
    for o in outs {
        v.push(down::<BoxEmit<T>>(o, "an output")?);
    }
    if v.len() == 1 {
        if let Some(one) = v.pop() {
            return Ok(Box::new(one));
        }
    }
    Ok(Box::new(Box::new(Tee::new(v)) as BoxEmit<T>))
}

fn add_side<T: Data>(sides: &mut SideOutputs, tag: &str, emit: AnyBox) -> Result<(), String> {
    sides.add(tag, down::<BoxEmit<T>>(emit, "a side output")?);
    Ok(())
}

fn source_task<T: Data>(
    name: String,
    src: AnyBox,
    head: AnyBox,
    outs: Outputs,
    uid: u32,
) -> Result<Box<dyn Task>, String> {
    let src = down::<Box<dyn Source<T>>>(src, "a source")?;
    let head = down::<BoxEmit<T>>(head, "a chain head")?;
    let task = SourceTask::new(name, src, head, outs)
        .with_source_uid(uid)
        .map_err(|e| format!("restoring the source's position: {e}"))?;
    Ok(Box::new(task))
}

fn input_task<T: Data>(
    name: String,
    inputs: Vec<Consumer>,
    head: AnyBox,
    outs: Outputs,
) -> Result<Box<dyn Task>, String> {
    let head = down::<BoxEmit<T>>(head, "a chain head")?;
    Ok(Box::new(InputTask::new(name, inputs, head, outs)))
}

impl TypeOps {
    /// The operations for records of type `T`.
    pub fn of<T: Data>() -> Arc<Self> {
        Arc::new(Self {
            name: std::any::type_name::<T>(),
            ring_output: ring_output::<T>,
            tee: tee::<T>,
            source_task: source_task::<T>,
            input_task: input_task::<T>,
            add_side: add_side::<T>,
        })
    }

    /// A ring output of this type.
    pub fn ring_output(
        &self,
        producers: Vec<Producer>,
        p: &EdgePartition,
        bp: Backpressure,
        max_parallelism: u32,
    ) -> Result<(AnyBox, Rc<RefCell<dyn OutputControl>>), String> {
        (self.ring_output)(producers, p, bp, max_parallelism)
    }

    /// One emit feeding all of `outs` (each a `BoxEmit<T>`); none drops records.
    pub fn tee(&self, outs: Vec<AnyBox>) -> Result<AnyBox, String> {
        (self.tee)(outs)
    }

    /// A source task; the source is operator `uid` in checkpoints.
    pub fn source_task(
        &self,
        name: String,
        src: AnyBox,
        head: AnyBox,
        outs: Outputs,
        uid: u32,
    ) -> Result<Box<dyn Task>, String> {
        (self.source_task)(name, src, head, outs, uid)
    }

    /// An input task.
    pub fn input_task(
        &self,
        name: String,
        inputs: Vec<Consumer>,
        head: AnyBox,
        outs: Outputs,
    ) -> Result<Box<dyn Task>, String> {
        (self.input_task)(name, inputs, head, outs)
    }
}

/// Whether a node may chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chaining {
    /// Chains where possible.
    #[default]
    Default,
    /// Never chains with its neighbours (`disable_chaining`).
    Never,
    /// Starts a new chain: not chained to its input (`start_new_chain`).
    HeadOfChain,
}

/// An input edge of a node.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Upstream node id.
    pub from: usize,
    /// Partitioning.
    pub partition: EdgePartition,
    /// The upstream's side output this edge reads (`None`: its main output).
    pub side: Option<String>,
}

/// An operator in the stream graph.
#[derive(Clone)]
pub struct Node {
    /// Id (index in the graph; inputs always have smaller ids).
    pub id: usize,
    /// Display name.
    pub name: String,
    /// What it builds.
    pub build: Build,
    /// Explicit parallelism.
    pub parallelism: Option<usize>,
    /// Non-parallel (parallelism is 1, always).
    pub non_parallel: bool,
    /// Chaining.
    pub chaining: Chaining,
    /// Explicit slot sharing group.
    pub slot_sharing_group: Option<String>,
    /// Inputs.
    pub inputs: Vec<Edge>,
    /// Operations of the output type (`None` for sinks).
    pub out: Option<Arc<TypeOps>>,
    /// Operations of the input type (`None` for sources).
    pub input: Option<Arc<TypeOps>>,
    /// Sources: whether the input ends (a bounded source).
    pub bounded: bool,
    /// The side outputs it produces: tag and record type.
    pub side_outputs: Vec<(String, Arc<TypeOps>)>,
    /// Whether its function may send to any side output (process functions): then
    /// `get_side_output` declares the tag it reads.
    pub open_side_outputs: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("parallelism", &self.parallelism)
            .field("inputs", &self.inputs)
            .finish()
    }
}

/// The operators of a job, as the API declared them.
#[derive(Debug, Clone, Default)]
pub struct StreamGraph {
    /// Job name.
    pub job_name: String,
    /// Nodes, in creation order.
    pub nodes: Vec<Node>,
    /// Environment parallelism.
    pub parallelism: Option<usize>,
    /// Chaining switched off for the whole job.
    pub chaining_disabled: bool,
    /// Where the job's sinks report.
    pub metrics: Arc<SinkMetrics>,
    /// Mistakes found while the job was declared (reported when it is built).
    pub errors: Vec<String>,
    /// The job's runtime mode, if it set one (else the configuration's).
    pub runtime_mode: Option<crate::api::RuntimeMode>,
    /// `pipeline.max-parallelism`, if the job set one.
    pub max_parallelism: Option<u32>,
}

/// A chain of operators that runs as one task per subtask.
#[derive(Debug, Clone)]
pub struct JobVertex {
    /// Vertex id.
    pub id: usize,
    /// Node ids, head first.
    pub nodes: Vec<usize>,
    /// Parallelism.
    pub parallelism: usize,
    /// Slot sharing group.
    pub slot_sharing_group: String,
    /// Display name: the chained operators' names joined by " -> ".
    pub name: String,
}

/// An edge between vertices.
#[derive(Debug, Clone)]
pub struct JobEdge {
    /// Upstream vertex.
    pub from: usize,
    /// Downstream vertex.
    pub to: usize,
    /// Resolved partitioning (never `Default`).
    pub partition: EdgePartition,
    /// Which input of the downstream head operator it feeds (0 for one-input
    /// operators; 0 or 1 for a two-input operator).
    pub input: usize,
    /// A side output of an operator of the upstream chain (`None`: the chain's output).
    pub side: Option<String>,
}

/// The job as it runs: vertices and edges, with parallelism and chaining resolved.
#[derive(Debug, Clone)]
pub struct JobGraph {
    /// Job name.
    pub job_name: String,
    /// The stream graph it came from.
    pub stream: StreamGraph,
    /// Vertices in topological order.
    pub vertices: Vec<JobVertex>,
    /// Edges.
    pub edges: Vec<JobEdge>,
    /// The checkpoint or savepoint the job resumes from (`spate run -s PATH`).
    pub restore_from: Option<std::path::PathBuf>,
    /// Key groups (`pipeline.max-parallelism`): keyed edges route keys by them, and
    /// keyed state is redistributed by them when a job resumes at another parallelism.
    pub max_parallelism: u32,
}

impl JobGraph {
    /// Resolves parallelism (operator > environment > `client_parallelism` >
    /// `default_parallelism`) and chaining (`chaining` is the configuration switch).
    pub fn build(
        stream: StreamGraph,
        client_parallelism: Option<usize>,
        default_parallelism: usize,
        chaining: bool,
    ) -> Result<Self, GraphError> {
        let nodes = &stream.nodes;
        if let Some(e) = stream.errors.first() {
            return Err(GraphError::Declaration(e.clone()));
        }
        if stream.runtime_mode == Some(crate::api::RuntimeMode::Batch) {
            if let Some(n) = nodes
                .iter()
                .find(|n| matches!(n.build, Build::Source(_)) && !n.bounded)
            {
                return Err(GraphError::Declaration(format!(
                    "'{}' is unbounded: BATCH runtime mode needs every source to end \
                     (set execution.runtime-mode: STREAMING, or bound the source)",
                    n.name
                )));
            }
        }
        if !nodes.iter().any(|n| matches!(n.build, Build::Sink(_))) {
            return Err(GraphError::NoSink);
        }
        let mut par = Vec::with_capacity(nodes.len());
        for n in nodes {
            let p = if n.non_parallel {
                match n.parallelism {
                    Some(p) if p != 1 => return Err(GraphError::NonParallel(n.name.clone())),
                    _ => 1,
                }
            } else {
                n.parallelism
                    .or(stream.parallelism)
                    .or(client_parallelism)
                    .unwrap_or(default_parallelism)
            };
            if p == 0 {
                return Err(GraphError::ZeroParallelism(n.name.clone()));
            }
            if p > MAX_PARALLELISM {
                return Err(GraphError::TooParallel(n.name.clone(), p));
            }
            par.push(p);
        }
        let mut group: Vec<String> = Vec::with_capacity(nodes.len());
        for n in nodes {
            // As in Flink: an explicit group wins; otherwise inherit the inputs' group
            // when they all share one, else "default".
            let inherited = n
                .inputs
                .first()
                .map(|e| group[e.from].clone())
                .filter(|g| n.inputs.iter().all(|e| &group[e.from] == g));
            let g = n
                .slot_sharing_group
                .clone()
                .or(inherited)
                .unwrap_or_else(|| "default".to_string());
            group.push(g);
        }
        let mut outdegree = vec![0usize; nodes.len()];
        for n in nodes {
            for e in &n.inputs {
                // Side outputs do not keep a node's main consumer from chaining to it.
                if e.side.is_none() {
                    outdegree[e.from] += 1;
                }
            }
        }
        // Resolve partitions.
        let resolve = |n: &Node, e: &Edge| -> Result<EdgePartition, GraphError> {
            let (up, down) = (par[e.from], par[n.id]);
            Ok(match &e.partition {
                // One subtask to one: every partitioning is forward (and may chain).
                _ if up == 1 && down == 1 => EdgePartition::Forward,
                EdgePartition::Default if up == down => EdgePartition::Forward,
                EdgePartition::Default => EdgePartition::Rebalance,
                EdgePartition::Forward if up != down => {
                    return Err(GraphError::ForwardParallelism {
                        from: nodes[e.from].name.clone(),
                        to: n.name.clone(),
                        up,
                        down,
                    })
                }
                p => p.clone(),
            })
        };
        let chaining = chaining && !stream.chaining_disabled;
        let mut vertex_of = vec![usize::MAX; nodes.len()];
        let mut vertices: Vec<JobVertex> = Vec::new();
        let mut edges = Vec::new();
        for n in nodes {
            let chained_to = match n.inputs.as_slice() {
                // A side output's consumer starts a chain of its own.
                [e] if e.side.is_some() => None,
                [e] => {
                    let up = &nodes[e.from];
                    let ok = chaining
                        && matches!(resolve(n, e)?, EdgePartition::Forward)
                        && par[e.from] == par[n.id]
                        && outdegree[e.from] == 1
                        && up.chaining != Chaining::Never
                        && n.chaining == Chaining::Default
                        && group[e.from] == group[n.id];
                    ok.then_some(vertex_of[e.from])
                }
                _ => None,
            };
            match chained_to {
                Some(v) => {
                    vertex_of[n.id] = v;
                    let vx = &mut vertices[v];
                    vx.nodes.push(n.id);
                    vx.name.push_str(" -> ");
                    vx.name.push_str(&n.name);
                }
                None => {
                    let v = vertices.len();
                    vertex_of[n.id] = v;
                    vertices.push(JobVertex {
                        id: v,
                        nodes: vec![n.id],
                        parallelism: par[n.id],
                        slot_sharing_group: group[n.id].clone(),
                        name: n.name.clone(),
                    });
                    let two_input = matches!(n.build, Build::TwoInput { .. });
                    for (i, e) in n.inputs.iter().enumerate() {
                        edges.push(JobEdge {
                            from: vertex_of[e.from],
                            to: v,
                            partition: resolve(n, e)?,
                            input: if two_input { i } else { 0 },
                            side: e.side.clone(),
                        });
                    }
                }
            }
        }
        let max_parallelism = match stream.max_parallelism {
            Some(m) => {
                let upper = spate_dataplane::checkpoint::UPPER_MAX_PARALLELISM;
                if m == 0 || m > upper {
                    return Err(GraphError::Declaration(format!(
                        "max parallelism {m} is outside 1..={upper} (pipeline.max-parallelism)"
                    )));
                }
                m
            }
            None => spate_dataplane::checkpoint::default_max_parallelism(
                par.iter().copied().max().unwrap_or(1),
            ),
        };
        if let Some((n, p)) = nodes
            .iter()
            .zip(&par)
            .find(|(_, &p)| p > max_parallelism as usize)
        {
            return Err(GraphError::Declaration(format!(
                "'{}': parallelism {p} is above the job's max parallelism {max_parallelism} \
                 (pipeline.max-parallelism)",
                n.name
            )));
        }
        Ok(Self {
            job_name: stream.job_name.clone(),
            stream,
            vertices,
            edges,
            restore_from: None,
            max_parallelism,
        })
    }

    /// The node at the end of a vertex's chain.
    pub fn tail(&self, v: usize) -> &Node {
        let id = self.vertices[v].nodes.last().copied().unwrap_or(0);
        &self.stream.nodes[id]
    }

    /// The node at the head of a vertex's chain.
    pub fn head(&self, v: usize) -> &Node {
        let id = self.vertices[v].nodes.first().copied().unwrap_or(0);
        &self.stream.nodes[id]
    }

    /// Slots the job needs: the sum over slot sharing groups of their widest vertex.
    pub fn slots_needed(&self) -> usize {
        self.group_offsets().1
    }

    /// Each group's first slot, in order of first appearance, and the total.
    pub fn group_offsets(&self) -> (Vec<(String, usize)>, usize) {
        let mut groups: Vec<(String, usize)> = Vec::new();
        for v in &self.vertices {
            match groups.iter_mut().find(|g| g.0 == v.slot_sharing_group) {
                Some(g) => g.1 = g.1.max(v.parallelism),
                None => groups.push((v.slot_sharing_group.clone(), v.parallelism)),
            }
        }
        let mut offset = 0;
        let mut out = Vec::new();
        for (g, width) in groups {
            out.push((g, offset));
            offset += width;
        }
        (out, offset)
    }

    /// The job graph as text: what `spate info` prints.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Job: {}", self.job_name);
        let _ = writeln!(s, "Slots needed: {}", self.slots_needed());
        let _ = writeln!(s, "Vertices:");
        for v in &self.vertices {
            let _ = writeln!(
                s,
                "  [{}] {}  (parallelism {}, slot sharing group \"{}\")",
                v.id, v.name, v.parallelism, v.slot_sharing_group
            );
            for id in &v.nodes {
                let _ = writeln!(s, "      - {}", self.stream.nodes[*id].name);
            }
        }
        let _ = writeln!(s, "Edges:");
        if self.edges.is_empty() {
            let _ = writeln!(s, "  (none: the whole job is one chain)");
        }
        for e in &self.edges {
            let _ = writeln!(
                s,
                "  [{}] {} --{}--> [{}] {}",
                e.from,
                self.vertices[e.from].name,
                e.partition.name(),
                e.to,
                self.vertices[e.to].name
            );
        }
        s
    }
}
