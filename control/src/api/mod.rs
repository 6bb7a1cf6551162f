//! The DataStream API: an execution environment, streams, keyed streams, and sinks.
//!
//! ```no_run
//! use spate::api::StreamExecutionEnvironment;
//! let env = StreamExecutionEnvironment::new("numbers");
//! env.from_collection((1..=10u64).collect())
//!     .filter(|x| x % 2 == 0)
//!     .map(|x| x * 10)
//!     .print();
//! ```

use crate::graph::{AnyBox, Build, Chaining, Edge, EdgePartition, Node, StreamGraph, TypeOps};
use spate_dataplane::checkpoint::WireState;
use spate_dataplane::exchange::KeyHashFn;
pub use spate_dataplane::operator::broadcast::{
    BroadcastContext, BroadcastProcessFunction, KeyedBroadcastProcessFunction,
};
use spate_dataplane::operator::broadcast::{BroadcastProcess, KeyedBroadcastProcess};
use spate_dataplane::operator::join::IntervalJoin;
pub use spate_dataplane::operator::join::PadFn;
use spate_dataplane::operator::keyed::TimeDomain;
use spate_dataplane::operator::keyed::{
    KeyedCoProcess, KeyedCoProcessFunction, KeyedProcess, KeyedProcessFunction, KeyedReduce,
};
use spate_dataplane::operator::process::Process;
use spate_dataplane::operator::sink::{self, SinkMetrics};
use spate_dataplane::operator::source::{
    IterSource, LinesSource, Pace, SocketSource, Source, SplitSource, Trade, TradeSource,
};
use spate_dataplane::operator::watermark::{TimestampsFn, WatermarkStrategy};
use spate_dataplane::operator::window::{
    AggregateFunction, CollectAll, CountWindowOperator, ReduceAggregate, SessionGapFn, Trigger,
    Window, WindowAssigner, WindowOperator,
};
use spate_dataplane::operator::{
    key_hash, BoxEmit, Chained, Chained2, CoProcess, CoProcessFunction, Collector, Emit, Emit2,
    Filter, FlatMap, Map, Operator, SubtaskInfo, TwoInputOperator,
};
use spate_dataplane::record::{Data, Either, Key};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

fn down<T: 'static>(b: AnyBox) -> Result<T, String> {
    b.downcast::<T>()
        .map(|b| *b)
        .map_err(|_| "internal: downstream of the wrong type".to_string())
}

fn boxed<T: 'static>(e: impl Emit<T> + 'static) -> AnyBox {
    Box::new(Box::new(e) as BoxEmit<T>)
}

/// An operator chained in front of its downstream `d` (a `BoxEmit<Op::Out>`).
/// The link takes part in checkpoints under the id of the node being built, and
/// takes back its state if the task restores one.
fn chained<Op: Operator>(op: Op, d: AnyBox) -> Result<AnyBox, String> {
    let next = down::<BoxEmit<Op::Out>>(d)?;
    let link = match crate::graph::take_building_uid() {
        Some(uid) => {
            Chained::with_uid(op, next, uid).map_err(|e| format!("restoring its state: {e}"))?
        }
        None => Chained::new(op, next),
    };
    Ok(boxed::<Op::In>(match crate::graph::take_building_timer() {
        Some(t) => link.timed(t),
        None => link,
    }))
}

/// A sink's path as the filesystem takes it: `file:///x` is `/x` (as Flink's).
fn without_file_scheme(p: std::path::PathBuf) -> std::path::PathBuf {
    match p.to_str().and_then(|s| s.strip_prefix("file://")) {
        Some(rest) => std::path::PathBuf::from(rest),
        None => p,
    }
}

/// How a job runs (Flink's `execution.runtime-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum RuntimeMode {
    /// Continuous processing: watermarks advance as records arrive.
    #[default]
    Streaming,
    /// For bounded inputs only: no watermark until the end of input, where event time
    /// jumps to its end (every window and event-time timer fires then); the results
    /// equal STREAMING's for the same input.
    Batch,
}

impl std::str::FromStr for RuntimeMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim().to_ascii_uppercase().as_str() {
            "STREAMING" => Ok(Self::Streaming),
            "BATCH" => Ok(Self::Batch),
            _ => Err(()),
        }
    }
}

/// Where a job is declared: sources come from here, and it holds the job's settings.
#[derive(Clone, Debug)]
pub struct StreamExecutionEnvironment {
    graph: Rc<RefCell<StreamGraph>>,
    /// BATCH mode, as the operators built on slot threads see it.
    batch: Arc<std::sync::atomic::AtomicBool>,
    /// Watermark generation turned off (an auto-watermark interval of 0).
    no_watermarks: Arc<std::sync::atomic::AtomicBool>,
}

impl StreamExecutionEnvironment {
    /// A new, empty job.
    pub fn new(job_name: &str) -> Self {
        Self {
            graph: Rc::new(RefCell::new(StreamGraph {
                job_name: job_name.to_string(),
                ..StreamGraph::default()
            })),
            batch: Arc::default(),
            no_watermarks: Arc::default(),
        }
    }

    /// Flink's `setAutoWatermarkInterval` (`pipeline.auto-watermark-interval`): the
    /// longest a watermark waits to go out once it advanced. spate sends a watermark
    /// with the batch that advanced it, well within any positive interval; 0 turns
    /// watermark generation off (only the end of a bounded input moves event time).
    pub fn set_auto_watermark_interval(&self, interval: std::time::Duration) -> &Self {
        // Relaxed: as `batch` below.
        self.no_watermarks
            .store(interval.is_zero(), std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Runs the job in STREAMING or BATCH mode (`env.setRuntimeMode`).
    pub fn set_runtime_mode(&self, mode: RuntimeMode) -> &Self {
        self.graph.borrow_mut().runtime_mode = Some(mode);
        // Relaxed: read when subtasks are built, after the job was declared and handed
        // over (a happens-before edge through the deployment itself).
        self.batch.store(
            mode == RuntimeMode::Batch,
            std::sync::atomic::Ordering::Relaxed,
        );
        self
    }

    /// The runtime mode the job set, if any.
    pub fn runtime_mode(&self) -> Option<RuntimeMode> {
        self.graph.borrow().runtime_mode
    }

    /// Default parallelism of this job's operators.
    pub fn set_parallelism(&self, p: usize) -> &Self {
        self.graph.borrow_mut().parallelism = Some(p);
        self
    }

    /// Flink's `setMaxParallelism` (`pipeline.max-parallelism`): the number of key
    /// groups keyed state is kept in, so the highest parallelism a savepoint of the job
    /// can be restored at. Keep it across savepoints: a savepoint restores only under
    /// the max parallelism it was taken with.
    pub fn set_max_parallelism(&self, max: u32) -> &Self {
        self.graph.borrow_mut().max_parallelism = Some(max);
        self
    }

    /// No operator of this job chains with another.
    pub fn disable_operator_chaining(&self) -> &Self {
        self.graph.borrow_mut().chaining_disabled = true;
        self
    }

    /// Records and latencies the job's sinks report.
    pub fn metrics(&self) -> Arc<SinkMetrics> {
        self.graph.borrow().metrics.clone()
    }

    /// The declared graph.
    pub fn stream_graph(&self) -> StreamGraph {
        self.graph.borrow().clone()
    }

    fn add(&self, mut node: Node) -> usize {
        let mut g = self.graph.borrow_mut();
        node.id = g.nodes.len();
        g.nodes.push(node);
        g.nodes.len() - 1
    }

    fn node(name: &str, build: Build) -> Node {
        Node {
            id: 0,
            name: name.to_string(),
            build,
            parallelism: None,
            non_parallel: false,
            chaining: Chaining::Default,
            slot_sharing_group: None,
            inputs: Vec::new(),
            out: None,
            input: None,
            bounded: false,
            side_outputs: Vec::new(),
            open_side_outputs: false,
        }
    }

    /// A source built per subtask by `make`. A `non_parallel` source runs one subtask.
    /// It counts as unbounded (see [`Self::add_bounded_source`]).
    pub fn add_source<T: Data, S: Source<T> + 'static>(
        &self,
        name: &str,
        non_parallel: bool,
        make: impl Fn(SubtaskInfo) -> Result<S, String> + Send + Sync + 'static,
    ) -> DataStream<T> {
        self.source_node(name, non_parallel, false, make)
    }

    /// A source whose input ends (it may run in BATCH mode).
    pub fn add_bounded_source<T: Data, S: Source<T> + 'static>(
        &self,
        name: &str,
        non_parallel: bool,
        make: impl Fn(SubtaskInfo) -> Result<S, String> + Send + Sync + 'static,
    ) -> DataStream<T> {
        self.source_node(name, non_parallel, true, make)
    }

    /// A parallel source that can resume at another parallelism: subtask `i` of `p`
    /// reads the *split* `make(i, p)` builds, a part of the input that `(i, p)` and
    /// the source's position fix (every `p`-th row from `i`, say). A job resumed from a
    /// checkpoint or savepoint at another parallelism keeps the splits of the run that
    /// first started: a subtask reads those of the old subtasks it takes over, in turns
    /// (see [`SplitSource`]). `bounded`: whether the input ends.
    pub fn add_split_source<T: Data, S: Source<T> + 'static>(
        &self,
        name: &str,
        bounded: bool,
        make: impl Fn(SubtaskInfo) -> Result<S, String> + Send + Sync + 'static,
    ) -> DataStream<T> {
        let make: spate_dataplane::operator::source::MakeSplit<S> = Arc::new(make);
        self.source_node(name, false, bounded, move |info| {
            SplitSource::new(make.clone(), info, bounded)
        })
    }

    fn source_node<T: Data, S: Source<T> + 'static>(
        &self,
        name: &str,
        non_parallel: bool,
        bounded: bool,
        make: impl Fn(SubtaskInfo) -> Result<S, String> + Send + Sync + 'static,
    ) -> DataStream<T> {
        let build = Build::Source(Arc::new(move |info| {
            Ok(Box::new(Box::new(make(info)?) as Box<dyn Source<T>>) as AnyBox)
        }));
        let mut n = Self::node(name, build);
        n.non_parallel = non_parallel;
        n.bounded = bounded;
        n.out = Some(TypeOps::of::<T>());
        let id = self.add(n);
        DataStream::new(self.clone(), id)
    }

    /// The elements of `items`, in order (non-parallel, bounded).
    pub fn from_collection<T: Data + Sync>(&self, items: Vec<T>) -> DataStream<T> {
        let items = Arc::new(items);
        self.add_bounded_source("Collection Source", true, move |_| {
            let items = items.clone();
            Ok(IterSource::new(
                (0..items.len()).filter_map(move |i| items.get(i).cloned()),
            ))
        })
    }

    /// W1 trades (parallel: subtask i generates the symbols ≡ i mod parallelism).
    /// `events`: total over all subtasks, `None` for unbounded.
    pub fn trades(&self, seed: u64, events: Option<u64>, pace: Pace) -> DataStream<Trade> {
        self.source_node("Trade Source", false, events.is_some(), move |info| {
            TradeSource::try_new(seed, events, pace, info)
        })
    }

    /// W2's trades: W1's, each stamped with an event time up to `disorder_ns` before
    /// its send time (seeded, uniform).
    pub fn disordered_trades(
        &self,
        seed: u64,
        events: Option<u64>,
        pace: Pace,
        disorder_ns: u64,
    ) -> DataStream<Trade> {
        self.source_node("Trade Source", false, events.is_some(), move |info| {
            TradeSource::try_new(seed, events, pace, info).map(|s| s.with_disorder(disorder_ns))
        })
    }

    /// The lines of a text file (non-parallel, bounded).
    pub fn read_text_file(&self, path: impl Into<std::path::PathBuf>) -> DataStream<String> {
        let path = path.into();
        if let Err(e) = crate::security::check_job_path(&path, "the text file") {
            self.graph.borrow_mut().errors.push(e);
        }
        let name = format!("File Source {}", path.display());
        self.add_bounded_source(&name, true, move |_| {
            LinesSource::open(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
    }

    /// Lines from a TCP server at `addr` (non-parallel; ends when the server closes).
    pub fn socket_text_stream(&self, addr: &str) -> DataStream<String> {
        let addr = addr.to_string();
        self.add_source(&format!("Socket Stream {addr}"), true, move |_| {
            SocketSource::connect(&addr).map_err(|e| format!("cannot connect to {addr}: {e}"))
        })
    }
}

pub use spate_dataplane::operator::process::{ProcessContext, ProcessFunction};
pub use spate_dataplane::operator::side::OutputTag;

/// A stream of `T` records.
pub struct DataStream<T> {
    env: StreamExecutionEnvironment,
    node: usize,
    partition: EdgePartition,
    /// The records' event times, once a watermark strategy assigned them (kept through
    /// operators that keep the record type).
    timestamps: Option<TimestampsFn<T>>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for DataStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStream")
            .field("node", &self.node)
            .field("partition", &self.partition)
            .field("timestamps", &self.timestamps.is_some())
            .finish()
    }
}

impl<T> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        Self {
            env: self.env.clone(),
            node: self.node,
            partition: self.partition.clone(),
            timestamps: self.timestamps.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Data> DataStream<T> {
    fn new(env: StreamExecutionEnvironment, node: usize) -> Self {
        Self {
            env,
            node,
            partition: EdgePartition::Default,
            timestamps: None,
            _t: PhantomData,
        }
    }

    fn edit(self, f: impl FnOnce(&mut Node)) -> Self {
        f(&mut self.env.graph.borrow_mut().nodes[self.node]);
        self
    }

    fn edge(&self) -> Edge {
        Edge {
            side: None,
            from: self.node,
            partition: self.partition.clone(),
        }
    }

    fn then<O: Data>(
        &self,
        name: &str,
        build: Build,
        partition_override: Option<EdgePartition>,
    ) -> DataStream<O> {
        let mut n = StreamExecutionEnvironment::node(name, build);
        let mut e = self.edge();
        if let Some(p) = partition_override {
            e.partition = p;
        }
        n.inputs = vec![e];
        n.input = Some(TypeOps::of::<T>());
        n.out = Some(TypeOps::of::<O>());
        DataStream::new(self.env.clone(), self.env.add(n))
    }

    /// Sets this operator's parallelism.
    pub fn set_parallelism(self, p: usize) -> Self {
        self.edit(|n| n.parallelism = Some(p))
    }

    /// Names this operator (shown by `spate info` and the REST API).
    pub fn name(self, name: &str) -> Self {
        self.edit(|n| n.name = name.to_string())
    }

    /// This operator chains with neither its input nor its output.
    pub fn disable_chaining(self) -> Self {
        self.edit(|n| n.chaining = Chaining::Never)
    }

    /// This operator starts a new chain (is not chained to its input).
    pub fn start_new_chain(self) -> Self {
        self.edit(|n| n.chaining = Chaining::HeadOfChain)
    }

    /// Puts this operator (and, by inheritance, what follows) in a slot sharing group.
    pub fn slot_sharing_group(self, group: &str) -> Self {
        self.edit(|n| n.slot_sharing_group = Some(group.to_string()))
    }

    /// One record out per record in.
    pub fn map<O: Data, F>(&self, f: F) -> DataStream<O>
    where
        F: FnMut(T) -> O + Clone + Send + Sync + 'static,
    {
        let build = Build::Operator(Arc::new(move |_, d| chained(Map::new(f.clone()), d)));
        self.then("Map", build, None)
    }

    /// Applies an operator of your own (Flink's `transform`): each subtask runs a clone
    /// of `op`, a batch at a time, with its hooks for watermarks, barriers and the end
    /// of input.
    pub fn transform<Op>(&self, name: &str, op: Op) -> DataStream<Op::Out>
    where
        Op: Operator<In = T> + Clone + Send + Sync,
        Op::Out: Data,
    {
        let build = Build::Operator(Arc::new(move |_, d| chained(op.clone(), d)));
        self.then(name, build, None)
    }

    /// Reads each record's event time and generates watermarks as `strategy` says
    /// (Flink's `assignTimestampsAndWatermarks`); windows and event-time timers
    /// downstream follow them.
    pub fn assign_timestamps_and_watermarks<F>(
        &self,
        strategy: WatermarkStrategy<T, F>,
    ) -> DataStream<T>
    where
        F: Fn(&T) -> u64 + Clone + Send + Sync + 'static,
        T: Sync,
    {
        let timestamps = strategy.timestamps_fn();
        let (batch, off) = (self.env.batch.clone(), self.env.no_watermarks.clone());
        let build = Build::Operator(Arc::new(move |_, d| {
            // BATCH (or watermarks off): no watermark until the end of input.
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            let on = !batch.load(relaxed) && !off.load(relaxed);
            chained(strategy.generator(on), d)
        }));
        let mut out = self.then("Timestamps/Watermarks", build, None);
        out.timestamps = Some(timestamps);
        out
    }

    /// Runs a `ProcessFunction` (Flink's `process` on a stream): any number of records
    /// out per record, to the main output or, with `ctx.output(&tag, r)`, to side
    /// outputs read with `get_side_output(&tag)`.
    pub fn process<P>(&self, f: P) -> DataStream<P::Out>
    where
        P: ProcessFunction<In = T>,
        P::Out: Data,
    {
        let build = Build::Operator(Arc::new(move |_, d| {
            let sides = crate::graph::take_side_outputs()?;
            chained(Process::new(f.clone()).with_side_outputs(sides), d)
        }));
        self.then("Process", build, None)
            .edit(|n| n.open_side_outputs = true)
    }

    /// The same stream, with each record's event time read by `f` (for operators
    /// downstream of the watermark generator whose records changed shape, as SQL's
    /// projections do).
    pub(crate) fn with_event_time<F>(&self, f: F) -> DataStream<T>
    where
        F: Fn(&T) -> u64 + Send + Sync + 'static,
    {
        let mut s = self.clone();
        s.timestamps = Some(Arc::new(move |batch: &[T], out: &mut Vec<u64>| {
            out.clear();
            out.extend(batch.iter().map(&f));
        }));
        s
    }

    /// Keeps the records for which `f` is true.
    pub fn filter<F>(&self, f: F) -> DataStream<T>
    where
        F: FnMut(&T) -> bool + Clone + Send + Sync + 'static,
    {
        let build = Build::Operator(Arc::new(move |_, d| chained(Filter::new(f.clone()), d)));
        let mut out = self.then("Filter", build, None);
        out.timestamps = self.timestamps.clone();
        out
    }

    /// Zero or more records out per record in, through a collector.
    pub fn flat_map<O: Data, F>(&self, f: F) -> DataStream<O>
    where
        F: FnMut(T, &mut Collector<'_, '_, O>) + Clone + Send + Sync + 'static,
    {
        let build = Build::Operator(Arc::new(move |_, d| chained(FlatMap::new(f.clone()), d)));
        self.then("Flat Map", build, None)
    }

    /// Partitions by key: the same key always reaches the same subtask, in order.
    ///
    /// The key selector is inlined where it runs: the exchange hashes a batch's keys in
    /// one loop, and the keyed operator after it looks state up with those hashes.
    pub fn key_by<K: Key, F>(&self, f: F) -> KeyedStream<T, K, F>
    where
        F: Fn(&T) -> K + Clone + Send + Sync + 'static,
    {
        let k2 = f.clone();
        let hash: KeyHashFn<T> = Arc::new(move |batch: &[T], out: &mut Vec<u64>| {
            out.clear();
            out.extend(batch.iter().map(|t| key_hash(&k2(t))));
        });
        KeyedStream {
            stream: self.clone(),
            key: f,
            hash: EdgePartition::Hash(Arc::new(hash)),
            _k: PhantomData,
        }
    }

    /// The records this stream's operator sent to the side output `tag` (Flink's
    /// `getSideOutput`). The operator must declare that side output (e.g. a window
    /// with `side_output_late_data(&tag)`), with records of type `S`.
    pub fn get_side_output<S: Data>(&self, tag: &OutputTag<S>) -> DataStream<S> {
        let (declared, open) = {
            let g = self.env.graph.borrow();
            let n = &g.nodes[self.node];
            let declared = n
                .side_outputs
                .iter()
                .any(|(t, ops)| t == tag.id() && ops.name == std::any::type_name::<S>());
            let taken = n.side_outputs.iter().any(|(t, _)| t == tag.id());
            (declared, n.open_side_outputs && !taken)
        };
        if open {
            // A process function may send to any tag: reading one declares it.
            self.env.graph.borrow_mut().nodes[self.node]
                .side_outputs
                .push((tag.id().to_string(), TypeOps::of::<S>()));
        } else if !declared {
            let name = self.env.graph.borrow().nodes[self.node].name.clone();
            self.env.graph.borrow_mut().errors.push(format!(
                "'{name}' has no side output '{}' of {}",
                tag.id(),
                std::any::type_name::<S>()
            ));
        }
        let mut n =
            StreamExecutionEnvironment::node(&format!("Side Output {}", tag.id()), Build::Union);
        n.inputs = vec![Edge {
            from: self.node,
            partition: EdgePartition::Default,
            side: Some(tag.id().to_string()),
        }];
        n.input = Some(TypeOps::of::<S>());
        n.out = Some(TypeOps::of::<S>());
        DataStream::new(self.env.clone(), self.env.add(n))
    }

    /// This stream and `other`, connected for a two-input operator (Flink's `connect`):
    /// records of both, possibly of different types, reach one operator that may share
    /// state between them.
    pub fn connect<B: Data>(&self, other: &DataStream<B>) -> ConnectedStreams<T, B> {
        ConnectedStreams {
            first: self.clone(),
            second: other.clone(),
        }
    }

    /// This stream with `rules` broadcast to every subtask of a two-input operator
    /// (Flink's `connect(stream.broadcast(descriptor))`): continue with
    /// `.process(BroadcastProcessFunction)`, whose broadcast state every subtask keeps
    /// alike.
    pub fn connect_broadcast<B: Data>(
        &self,
        rules: &DataStream<B>,
    ) -> BroadcastConnectedStreams<T, B> {
        BroadcastConnectedStreams {
            connected: self.connect(rules),
        }
    }

    /// This stream and `others`, merged.
    pub fn union(&self, others: &[DataStream<T>]) -> DataStream<T> {
        let mut n = StreamExecutionEnvironment::node("Union", Build::Union);
        n.inputs = std::iter::once(self.edge())
            .chain(others.iter().map(|o| o.edge()))
            .collect();
        n.input = Some(TypeOps::of::<T>());
        n.out = Some(TypeOps::of::<T>());
        let mut out = DataStream::new(self.env.clone(), self.env.add(n));
        if others.iter().all(|o| o.timestamps.is_some()) {
            out.timestamps = self.timestamps.clone();
        }
        out
    }

    fn partitioned(&self, p: EdgePartition) -> Self {
        let mut s = self.clone();
        s.partition = p;
        s
    }

    /// Round-robin to the next operator's subtasks.
    pub fn rebalance(&self) -> Self {
        self.partitioned(EdgePartition::Rebalance)
    }

    /// Randomly to the next operator's subtasks.
    pub fn shuffle(&self) -> Self {
        self.partitioned(EdgePartition::Shuffle)
    }

    /// Every record to every subtask of the next operator.
    pub fn broadcast(&self) -> Self {
        self.partitioned(EdgePartition::Broadcast)
    }

    /// To the same-index subtask of the next operator (equal parallelism required).
    pub fn forward(&self) -> Self {
        self.partitioned(EdgePartition::Forward)
    }

    fn sink(
        &self,
        name: &str,
        make: impl Fn(SubtaskInfo, Arc<SinkMetrics>) -> Result<AnyBox, String> + Send + Sync + 'static,
    ) -> DataStreamSink {
        let metrics = self.env.metrics();
        let mut n = StreamExecutionEnvironment::node(
            name,
            Build::Sink(Arc::new(move |info| make(info, metrics.clone()))),
        );
        n.inputs = vec![self.edge()];
        n.input = Some(TypeOps::of::<T>());
        DataStreamSink {
            env: self.env.clone(),
            node: self.env.add(n),
        }
    }

    /// On a cluster with `security.job.allowed-dirs`, a sink's path outside them makes
    /// the job's graph invalid (the submission is refused).
    fn confined(&self, path: &std::path::Path) {
        if let Err(e) = crate::security::check_job_path(path, "the file sink's path") {
            self.env.graph.borrow_mut().errors.push(e);
        }
    }

    /// Prints records to stdout (`N> ` prefixed when the sink is parallel).
    pub fn print(&self) -> DataStreamSink {
        self.sink("Print to Std. Out", |info, m| {
            Ok(boxed::<T>(sink::print_sink(info, m)))
        })
    }

    /// Writes records as lines to `path` (`path.N` per subtask when parallel).
    pub fn write_as_text(&self, path: impl Into<std::path::PathBuf>) -> DataStreamSink {
        let path = without_file_scheme(path.into());
        // A file (with `path.N` beside it when parallel): its directory is what counts.
        if let Err(e) = crate::security::check_job_file(&path, "the file sink's path") {
            self.env.graph.borrow_mut().errors.push(e);
        }
        self.sink(&format!("File Sink {}", path.display()), move |info, m| {
            sink::file_sink(&path, info, m)
                .map(boxed::<T>)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))
        })
    }

    /// Writes records as lines into part files under the directory `dir`, exactly once
    /// with checkpoints (Flink's `FileSink` with a row format, rolling on every
    /// checkpoint): subtask `s` writes hidden `.part-s-n.inprogress` files; a part is
    /// renamed `part-s-n` (committed) once the checkpoint that closed it completed, or at
    /// the end of input. After a failure the job resumes from its latest checkpoint and
    /// what the failed attempt wrote after it is discarded, so the committed parts hold
    /// each record once. Readers ignore hidden files.
    pub fn sink_to_files(&self, dir: impl Into<std::path::PathBuf>) -> DataStreamSink {
        let dir = without_file_scheme(dir.into());
        self.confined(&dir);
        self.sink(&format!("File Sink {}", dir.display()), move |info, m| {
            let uid = crate::graph::take_building_uid();
            let restored = uid.and_then(spate_dataplane::checkpoint::take_restored);
            spate_dataplane::operator::file_sink::FileSink::new(
                &dir,
                info,
                uid,
                restored.as_deref(),
                m,
            )
            .map(boxed::<T>)
        })
    }

    /// As [`Self::sink_to_files`], each record into the bucket `bucket_of` names: a
    /// directory under `dir` (as `dt=2024-01-01/hm=10:00`), its parts committed with
    /// checkpoints as the others.
    pub fn sink_to_bucketed_files(
        &self,
        dir: impl Into<std::path::PathBuf>,
        bucket_of: impl Fn(&T) -> String + Clone + Send + Sync + 'static,
    ) -> DataStreamSink {
        let dir = without_file_scheme(dir.into());
        self.confined(&dir);
        self.sink(&format!("File Sink {}", dir.display()), move |info, m| {
            let uid = crate::graph::take_building_uid();
            let restored = uid.and_then(spate_dataplane::checkpoint::take_restored);
            spate_dataplane::operator::file_sink::FileSink::with_buckets(
                &dir,
                info,
                uid,
                restored.as_deref(),
                m,
                Some(Box::new(bucket_of.clone())),
            )
            .map(boxed::<T>)
        })
    }

    /// Writes records as lines to a TCP server at `addr`.
    pub fn write_to_socket(&self, addr: &str) -> DataStreamSink {
        let addr = addr.to_string();
        self.sink(&format!("Socket Sink {addr}"), move |_, m| {
            sink::socket_sink(&addr, m)
                .map(boxed::<T>)
                .map_err(|e| format!("cannot connect to {addr}: {e}"))
        })
    }

    /// Drops records, counting them.
    pub fn discard(&self) -> DataStreamSink {
        self.sink("Discarding Sink", |_, m| {
            Ok(boxed::<T>(sink::DiscardSink::new(m)))
        })
    }

    /// Records `now − ts(record)` of every record into the job's latency histogram.
    pub fn latency_sink(&self, ts: fn(&T) -> u64) -> DataStreamSink {
        self.latency_sink_sampled(ts, 1)
    }

    /// Records `now − ts(record)` of one record in `every` (a uniform sample).
    pub fn latency_sink_sampled(&self, ts: fn(&T) -> u64, every: u32) -> DataStreamSink {
        self.sink("Latency Sink", move |_, m| {
            Ok(boxed::<T>(sink::LatencySink::new(ts, m, every)))
        })
    }

    /// Collects records into `into` when the input ends (for tests and small results).
    pub fn collect(&self, into: Arc<Mutex<Vec<T>>>) -> DataStreamSink
    where
        T: Sync,
    {
        self.sink("Collect Sink", move |_, m| {
            Ok(boxed::<T>(sink::CollectSink::new(into.clone(), m)))
        })
    }
}

/// A sink, for naming and setting its parallelism.
#[derive(Debug)]
pub struct DataStreamSink {
    env: StreamExecutionEnvironment,
    node: usize,
}

impl DataStreamSink {
    fn edit(self, f: impl FnOnce(&mut Node)) -> Self {
        f(&mut self.env.graph.borrow_mut().nodes[self.node]);
        self
    }
    /// Sets the sink's parallelism.
    pub fn set_parallelism(self, p: usize) -> Self {
        self.edit(|n| n.parallelism = Some(p))
    }
    /// Names the sink.
    pub fn name(self, name: &str) -> Self {
        self.edit(|n| n.name = name.to_string())
    }
    /// The sink chains with nothing.
    pub fn disable_chaining(self) -> Self {
        self.edit(|n| n.chaining = Chaining::Never)
    }
    /// The sink starts a new chain.
    pub fn start_new_chain(self) -> Self {
        self.edit(|n| n.chaining = Chaining::HeadOfChain)
    }
    /// The sink's slot sharing group.
    pub fn slot_sharing_group(self, group: &str) -> Self {
        self.edit(|n| n.slot_sharing_group = Some(group.to_string()))
    }
}

/// A stream partitioned by key, with its key selector `F`.
pub struct KeyedStream<T, K, F> {
    stream: DataStream<T>,
    key: F,
    hash: EdgePartition,
    _k: PhantomData<fn() -> K>,
}

impl<T: Data, K: Key, F> KeyedStream<T, K, F>
where
    F: Fn(&T) -> K + Clone + Send + Sync + 'static,
{
    /// Runs a KeyedProcessFunction with per-key state and timers.
    pub fn process<P>(&self, f: P) -> DataStream<P::Out>
    where
        P: KeyedProcessFunction<Key = K, In = T>,
        P::Out: Data,
    {
        let key = self.key.clone();
        let build = Build::Operator(Arc::new(move |_, d| {
            let sides = crate::graph::take_side_outputs()?;
            chained(
                KeyedProcess::new(f.clone(), key.clone()).with_side_outputs(sides),
                d,
            )
        }));
        self.stream
            .then("Keyed Process", build, Some(self.hash.clone()))
            .edit(|n| n.open_side_outputs = true)
    }

    /// Joins this keyed stream with `other` in event time (Flink's `intervalJoin`):
    /// continue with `.between(lower_ns, upper_ns)`.
    pub fn interval_join<B: Data, F2>(
        &self,
        other: &KeyedStream<B, K, F2>,
    ) -> IntervalJoinBuilder<T, B, K, F, F2>
    where
        F2: Fn(&B) -> K + Clone + Send + Sync + 'static,
    {
        IntervalJoinBuilder {
            left: KeyedStream {
                stream: self.stream.clone(),
                key: self.key.clone(),
                hash: self.hash.clone(),
                _k: PhantomData,
            },
            right: KeyedStream {
                stream: other.stream.clone(),
                key: other.key.clone(),
                hash: other.hash.clone(),
                _k: PhantomData,
            },
        }
    }

    /// This keyed stream with `rules` broadcast to every subtask (Flink's
    /// `keyBy(..).connect(stream.broadcast(descriptor))`): continue with
    /// `.process(KeyedBroadcastProcessFunction)`.
    pub fn connect_broadcast<B: Data>(
        &self,
        rules: &DataStream<B>,
    ) -> KeyedBroadcastConnectedStreams<T, B, K, F> {
        KeyedBroadcastConnectedStreams {
            connected: self.stream.connect(rules),
            key: self.key.clone(),
            hash: self.hash.clone(),
            _k: PhantomData,
        }
    }

    /// Windows of this keyed stream (Flink's `window`).
    pub fn window(&self, assigner: WindowAssigner) -> WindowedStream<T, K, F> {
        WindowedStream {
            keyed: KeyedStream {
                stream: self.stream.clone(),
                key: self.key.clone(),
                hash: self.hash.clone(),
                _k: PhantomData,
            },
            assigner,
            late_tag: None,
            trigger: Trigger::default(),
            lateness_ns: 0,
            gap: None,
        }
    }

    /// Windows of `size` records per key (Flink's `countWindow`): each fires with its
    /// last record.
    pub fn count_window(&self, size: u64) -> CountWindowedStream<T, K, F> {
        if size == 0 {
            self.stream
                .env
                .graph
                .borrow_mut()
                .errors
                .push("count_window: a window must hold at least one record".to_string());
        }
        CountWindowedStream {
            keyed: KeyedStream {
                stream: self.stream.clone(),
                key: self.key.clone(),
                hash: self.hash.clone(),
                _k: PhantomData,
            },
            size,
        }
    }

    /// Rolling reduce: emits `f(accumulated, new)` per record.
    pub fn reduce<R>(&self, f: R) -> DataStream<T>
    where
        R: FnMut(T, T) -> T + Clone + Send + Sync + 'static,
    {
        let key = self.key.clone();
        let build = Build::Operator(Arc::new(move |_, d| {
            chained(KeyedReduce::new(f.clone(), key.clone()), d)
        }));
        self.stream
            .then("Keyed Reduce", build, Some(self.hash.clone()))
    }

    /// Rolling sum of the field `field` selects (other fields from the key's first record).
    pub fn sum<N>(&self, field: fn(&mut T) -> &mut N) -> DataStream<T>
    where
        N: std::ops::AddAssign + Copy + 'static,
    {
        self.reduce(move |mut acc, mut x| {
            *field(&mut acc) += *field(&mut x);
            acc
        })
        .name("Keyed Sum")
    }

    /// Rolling minimum of a field (other fields from the key's first record).
    pub fn min<N>(&self, field: fn(&mut T) -> &mut N) -> DataStream<T>
    where
        N: PartialOrd + Copy + 'static,
    {
        self.reduce(move |mut acc, mut x| {
            let v = *field(&mut x);
            if v < *field(&mut acc) {
                *field(&mut acc) = v;
            }
            acc
        })
        .name("Keyed Min")
    }

    /// Rolling maximum of a field (other fields from the key's first record).
    pub fn max<N>(&self, field: fn(&mut T) -> &mut N) -> DataStream<T>
    where
        N: PartialOrd + Copy + 'static,
    {
        self.reduce(move |mut acc, mut x| {
            let v = *field(&mut x);
            if v > *field(&mut acc) {
                *field(&mut acc) = v;
            }
            acc
        })
        .name("Keyed Max")
    }
}

/// A keyed stream cut into windows.
pub struct WindowedStream<T, K, F> {
    keyed: KeyedStream<T, K, F>,
    assigner: WindowAssigner,
    /// Where late records go, if the job asked (`side_output_late_data`).
    late_tag: Option<String>,
    trigger: Trigger,
    lateness_ns: u64,
    gap: Option<SessionGapFn<T>>,
}

impl<T: Data, K: Key, F> WindowedStream<T, K, F>
where
    F: Fn(&T) -> K + Clone + Send + Sync + 'static,
{
    /// Sends records that arrive after their windows fired to the side output `tag`
    /// instead of dropping them (Flink's `sideOutputLateData`); read it with
    /// `get_side_output(&tag)` on the window's result stream.
    pub fn side_output_late_data(mut self, tag: &OutputTag<T>) -> Self {
        self.late_tag = Some(tag.id().to_string());
        self
    }

    /// Fires the windows as `trigger` says instead of the assigner's default (Flink's
    /// `trigger`): count, event or processing time, continuous, and `purging()`
    /// variants of each.
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// Keeps event-time windows open for `lateness` after the watermark passes their
    /// end (Flink's `allowedLateness`): a record arriving then is added and fires its
    /// window again (under the event-time trigger); later records are late.
    pub fn allowed_lateness(mut self, lateness: std::time::Duration) -> Self {
        self.lateness_ns = u64::try_from(lateness.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// Session windows whose gap each record sets (Flink's `withDynamicGap`): a
    /// record's session closes `gap(record)` after it (a zero gap counts as 1 ns).
    pub fn with_dynamic_gap<G>(mut self, gap: G) -> Self
    where
        G: Fn(&T) -> std::time::Duration + Send + Sync + 'static,
    {
        self.gap = Some(Arc::new(move |t: &T| {
            u64::try_from(gap(t).as_nanos()).unwrap_or(u64::MAX)
        }));
        self
    }

    /// Declares the late-data side output on the window's node.
    fn declare_late(&self, node: usize) {
        if let Some(tag) = &self.late_tag {
            self.keyed.stream.env.graph.borrow_mut().nodes[node]
                .side_outputs
                .push((tag.clone(), TypeOps::of::<T>()));
        }
    }

    /// The window node: `agg` accumulates each window, `result(key, window, aggregate,
    /// out)` emits when it fires; late records go to the late-data side output if the
    /// job asked for one.
    fn window_node<A, O, W>(&self, agg: A, result: W) -> DataStream<O>
    where
        A: AggregateFunction<In = T>,
        O: Data,
        W: Fn(&K, &Window, A::Out, &mut Vec<O>) + Clone + Send + Sync + 'static,
    {
        let stream = &self.keyed.stream;
        let timestamps = stream.timestamps.clone();
        if self.assigner.domain() == TimeDomain::EventTime && timestamps.is_none() {
            stream.env.graph.borrow_mut().errors.push(
                "an event-time window needs the records' timestamps: call \
                 assign_timestamps_and_watermarks on the stream before key_by"
                    .to_string(),
            );
        }
        if let Err(e) = self.trigger.check(&self.assigner) {
            stream.env.graph.borrow_mut().errors.push(e);
        }
        if self.gap.is_some() && !self.assigner.is_merging() {
            stream.env.graph.borrow_mut().errors.push(
                "with_dynamic_gap needs session windows (event_time_session or \
                 processing_time_session)"
                    .to_string(),
            );
        }
        let assigner = self.assigner;
        let key = self.keyed.key.clone();
        let late_tag = self.late_tag.clone();
        let (trigger, lateness, gap) = (self.trigger, self.lateness_ns, self.gap.clone());
        let build = Build::Operator(Arc::new(move |_, d| {
            let mut op = WindowOperator::new(
                assigner,
                agg.clone(),
                key.clone(),
                timestamps.clone(),
                result.clone(),
            )
            .with_trigger(trigger)
            .with_allowed_lateness(lateness);
            if let Some(g) = &gap {
                op = op.with_dynamic_gap(g.clone());
            }
            let late = late_tag
                .as_deref()
                .and_then(crate::graph::take_side_output::<T>);
            match late {
                Some(l) => chained(op.with_late_output(l), d),
                None => chained(op, d),
            }
        }));
        let out = stream.then("Window", build, Some(self.keyed.hash.clone()));
        self.declare_late(out.node);
        out
    }

    /// Aggregates each window incrementally with `agg`; emits
    /// `result(key, window, aggregate)` when it fires (Flink's `aggregate` with a
    /// window function); `None` emits nothing.
    pub fn aggregate_with<A, O, R>(&self, agg: A, result: R) -> DataStream<O>
    where
        A: AggregateFunction<In = T>,
        O: Data,
        R: Fn(&K, &Window, A::Out) -> Option<O> + Clone + Send + Sync + 'static,
    {
        self.window_node(agg, move |k: &K, w: &Window, r, out: &mut Vec<O>| {
            out.extend(result(k, w, r))
        })
    }

    /// Aggregates each window with `agg` and emits its result.
    pub fn aggregate<A>(&self, agg: A) -> DataStream<A::Out>
    where
        A: AggregateFunction<In = T>,
        A::Out: Data,
    {
        self.aggregate_with(agg, |_, _, r| Some(r))
    }

    /// Reduces each window's records with `f(accumulated, new)`.
    pub fn reduce<R>(&self, f: R) -> DataStream<T>
    where
        R: Fn(T, T) -> T + Clone + Send + Sync + 'static,
        T: Sync,
    {
        self.aggregate_with(ReduceAggregate::new(f), |_, _, r: Option<T>| r)
    }

    /// Calls `f(key, window, records, out)` with all of a window's records when it
    /// fires (Flink's `process` with a `ProcessWindowFunction`); `f` emits any number of
    /// records into `out`. Keeps every record of an open window: prefer `aggregate`
    /// where an accumulator will do.
    pub fn process<O, P>(&self, f: P) -> DataStream<O>
    where
        O: Data,
        P: Fn(&K, &Window, Vec<T>, &mut Vec<O>) + Clone + Send + Sync + 'static,
        T: Sync,
    {
        self.window_node(CollectAll::<T>::default(), f)
    }
}

/// A keyed stream cut into windows of a number of records.
pub struct CountWindowedStream<T, K, F> {
    keyed: KeyedStream<T, K, F>,
    size: u64,
}

impl<T: Data, K: Key, F> CountWindowedStream<T, K, F>
where
    F: Fn(&T) -> K + Clone + Send + Sync + 'static,
{
    /// Aggregates each window of records with `agg` and emits `result(key, aggregate)`.
    pub fn aggregate_with<A, O, R>(&self, agg: A, result: R) -> DataStream<O>
    where
        A: AggregateFunction<In = T>,
        O: Data,
        R: Fn(&K, A::Out) -> Option<O> + Clone + Send + Sync + 'static,
    {
        let size = self.size;
        let key = self.keyed.key.clone();
        let build = Build::Operator(Arc::new(move |_, d| {
            let result = result.clone();
            chained(
                CountWindowOperator::new(
                    size,
                    agg.clone(),
                    key.clone(),
                    move |k: &K, r, out: &mut Vec<O>| out.extend(result(k, r)),
                ),
                d,
            )
        }));
        self.keyed
            .stream
            .then("Count Window", build, Some(self.keyed.hash.clone()))
    }

    /// Aggregates each window of records with `agg` and emits its result.
    pub fn aggregate<A>(&self, agg: A) -> DataStream<A::Out>
    where
        A: AggregateFunction<In = T>,
        A::Out: Data,
    {
        self.aggregate_with(agg, |_, r| Some(r))
    }

    /// Reduces each window of records with `f(accumulated, new)`.
    pub fn reduce<R>(&self, f: R) -> DataStream<T>
    where
        R: Fn(T, T) -> T + Clone + Send + Sync + 'static,
        T: Sync,
    {
        self.aggregate_with(ReduceAggregate::new(f), |_, r: Option<T>| r)
    }
}

fn two_input_task<A: Data, B: Data>(
    name: String,
    inputs: Vec<(usize, spate_dataplane::ring::Consumer)>,
    head: AnyBox,
    outputs: spate_dataplane::task::Outputs,
) -> crate::graph::TaskResult {
    let head = down::<Box<dyn Emit2<A, B>>>(head)?;
    Ok(Box::new(spate_dataplane::task::InputTask::two_inputs(
        name, inputs, head, outputs,
    )))
}

/// Two streams connected for a two-input operator.
pub struct ConnectedStreams<A, B> {
    first: DataStream<A>,
    second: DataStream<B>,
}

impl<A: Data, B: Data> ConnectedStreams<A, B> {
    /// Applies a two-input operator of your own (each subtask runs a clone).
    pub fn transform<Op>(&self, name: &str, op: Op) -> DataStream<Op::Out>
    where
        Op: TwoInputOperator<In1 = A, In2 = B> + Clone + Send + Sync,
        Op::Out: Data,
    {
        self.two_input(name, None, move || Ok(op.clone()))
    }

    /// A two-input node whose subtasks each run `make()`.
    fn two_input<Op, M>(
        &self,
        name: &str,
        partitions: Option<(EdgePartition, EdgePartition)>,
        make: M,
    ) -> DataStream<Op::Out>
    where
        Op: TwoInputOperator<In1 = A, In2 = B>,
        Op::Out: Data,
        M: Fn() -> Result<Op, String> + Send + Sync + 'static,
    {
        let build: crate::graph::OperatorBuilder = Arc::new(move |_, d| {
            let next = down::<BoxEmit<Op::Out>>(d)?;
            let op = make()?;
            let head: Box<dyn Emit2<A, B>> = match crate::graph::take_building_uid() {
                Some(uid) => Box::new(
                    Chained2::with_uid(op, next, uid)
                        .map_err(|e| format!("restoring its state: {e}"))?,
                ),
                None => Box::new(Chained2::new(op, next)),
            };
            Ok(Box::new(head) as AnyBox)
        });
        let env = &self.first.env;
        let mut n = StreamExecutionEnvironment::node(
            name,
            Build::TwoInput {
                build,
                task: two_input_task::<A, B>,
            },
        );
        let (mut e1, mut e2) = (self.first.edge(), self.second.edge());
        if let Some((p1, p2)) = partitions {
            e1.partition = p1;
            e2.partition = p2;
        }
        n.inputs = vec![e1, e2];
        n.input = Some(TypeOps::of::<A>());
        n.out = Some(TypeOps::of::<Op::Out>());
        DataStream::new(env.clone(), env.add(n))
    }

    /// Runs a `CoProcessFunction` over both inputs.
    pub fn process<F>(&self, f: F) -> DataStream<F::Out>
    where
        F: CoProcessFunction<In1 = A, In2 = B>,
        F::Out: Data,
    {
        self.two_input("Co-Process", None, move || Ok(CoProcess(f.clone())))
    }

    /// Keys both inputs (Flink's `connect(..).keyBy(k1, k2)`): records of either side
    /// with equal keys meet in one subtask and share that key's state.
    pub fn key_by<K: Key, F1, F2>(&self, k1: F1, k2: F2) -> KeyedConnectedStreams<A, B, K, F1, F2>
    where
        F1: Fn(&A) -> K + Clone + Send + Sync + 'static,
        F2: Fn(&B) -> K + Clone + Send + Sync + 'static,
    {
        KeyedConnectedStreams {
            connected: ConnectedStreams {
                first: self.first.clone(),
                second: self.second.clone(),
            },
            k1,
            k2,
            _k: PhantomData,
        }
    }
}

/// Two connected streams keyed alike.
pub struct KeyedConnectedStreams<A, B, K, F1, F2> {
    connected: ConnectedStreams<A, B>,
    k1: F1,
    k2: F2,
    _k: PhantomData<fn() -> K>,
}

impl<A: Data, B: Data, K: Key, F1, F2> KeyedConnectedStreams<A, B, K, F1, F2>
where
    F1: Fn(&A) -> K + Clone + Send + Sync + 'static,
    F2: Fn(&B) -> K + Clone + Send + Sync + 'static,
{
    /// Runs a `KeyedCoProcessFunction` with per-key state shared by both inputs.
    pub fn process<P>(&self, f: P) -> DataStream<P::Out>
    where
        P: KeyedCoProcessFunction<Key = K, In1 = A, In2 = B>,
        P::In1: 'static,
        P::In2: 'static,
        P::Out: Data,
    {
        let (k1, k2) = (self.k1.clone(), self.k2.clone());
        let (h1, h2) = (k1.clone(), k2.clone());
        let hash1: KeyHashFn<A> = Arc::new(move |batch: &[A], out: &mut Vec<u64>| {
            out.clear();
            out.extend(batch.iter().map(|t| key_hash(&h1(t))));
        });
        let hash2: KeyHashFn<B> = Arc::new(move |batch: &[B], out: &mut Vec<u64>| {
            out.clear();
            out.extend(batch.iter().map(|t| key_hash(&h2(t))));
        });
        self.connected
            .two_input(
                "Keyed Co-Process",
                Some((
                    EdgePartition::Hash(Arc::new(hash1)),
                    EdgePartition::Hash(Arc::new(hash2)),
                )),
                move || {
                    let sides = crate::graph::take_side_outputs()?;
                    Ok(KeyedCoProcess::new(f.clone(), k1.clone(), k2.clone())
                        .with_side_outputs(sides))
                },
            )
            .edit(|n| n.open_side_outputs = true)
    }
}

/// Two keyed streams about to be interval-joined.
pub struct IntervalJoinBuilder<A, B, K, F1, F2> {
    left: KeyedStream<A, K, F1>,
    right: KeyedStream<B, K, F2>,
}

impl<A: Data, B: Data, K: Key, F1, F2> IntervalJoinBuilder<A, B, K, F1, F2>
where
    F1: Fn(&A) -> K + Clone + Send + Sync + 'static,
    F2: Fn(&B) -> K + Clone + Send + Sync + 'static,
{
    /// A left record `a` meets the right records of its key whose event time lies in
    /// `[a.ts + lower_ns, a.ts + upper_ns]` (either bound may be negative).
    pub fn between(&self, lower_ns: i64, upper_ns: i64) -> IntervalJoined<A, B, K, F1, F2> {
        IntervalJoined {
            left: KeyedStream {
                stream: self.left.stream.clone(),
                key: self.left.key.clone(),
                hash: self.left.hash.clone(),
                _k: PhantomData,
            },
            right: KeyedStream {
                stream: self.right.stream.clone(),
                key: self.right.key.clone(),
                hash: self.right.hash.clone(),
                _k: PhantomData,
            },
            lower_ns,
            upper_ns,
        }
    }
}

/// An interval join with its bounds.
pub struct IntervalJoined<A, B, K, F1, F2> {
    left: KeyedStream<A, K, F1>,
    right: KeyedStream<B, K, F2>,
    lower_ns: i64,
    upper_ns: i64,
}

impl<A: Data, B: Data, K: Key, F1, F2> IntervalJoined<A, B, K, F1, F2>
where
    F1: Fn(&A) -> K + Clone + Send + Sync + 'static,
    F2: Fn(&B) -> K + Clone + Send + Sync + 'static,
    A: Sync,
    B: Sync,
{
    /// Calls `f(a, b, out)` for every pair that meets (Flink's `ProcessJoinFunction`).
    pub fn process<O, P>(&self, f: P) -> DataStream<O>
    where
        O: Data,
        P: Fn(&A, &B, &mut Vec<O>) + Clone + Send + Sync + 'static,
    {
        self.process_outer(
            move |a: &A, b: &B, out: &mut Vec<O>| {
                f(a, b, out);
                true
            },
            None,
            None,
        )
    }

    /// An outer interval join (what SQL's `LEFT | RIGHT | FULL JOIN` with time bounds
    /// runs; Flink's DataStream API has none): `f(a, b, out)` emits for a pair and says
    /// whether it met (a condition beyond the key and the interval); `left` emits a
    /// left record that met no right one, once none can come any more (when the
    /// watermark passes its interval, at the latest at the end of input), and `right`
    /// a right record that met no left one. A side without a function drops its
    /// unmatched records, as the inner join does.
    pub fn process_outer<O, P>(
        &self,
        f: P,
        left: Option<PadFn<A, O>>,
        right: Option<PadFn<B, O>>,
    ) -> DataStream<O>
    where
        O: Data,
        P: Fn(&A, &B, &mut Vec<O>) -> bool + Clone + Send + Sync + 'static,
    {
        let env = self.left.stream.env.clone();
        let (ts_a, ts_b) = (
            self.left.stream.timestamps.clone(),
            self.right.stream.timestamps.clone(),
        );
        let (Some(ts_a), Some(ts_b)) = (ts_a, ts_b) else {
            env.graph.borrow_mut().errors.push(
                "an interval join needs both streams' timestamps: call \
                 assign_timestamps_and_watermarks on each before key_by"
                    .to_string(),
            );
            return self
                .left
                .stream
                .connect(&self.right.stream)
                .process(NoJoin(PhantomData));
        };
        if self.lower_ns > self.upper_ns {
            env.graph.borrow_mut().errors.push(format!(
                "an interval join's lower bound ({} ns) is above its upper bound ({} ns)",
                self.lower_ns, self.upper_ns
            ));
        }
        let (ka, kb) = (self.left.key.clone(), self.right.key.clone());
        let (lower, upper) = (self.lower_ns, self.upper_ns);
        self.left.stream.connect(&self.right.stream).two_input(
            "Interval Join",
            Some((self.left.hash.clone(), self.right.hash.clone())),
            move || {
                Ok(IntervalJoin::new(
                    lower,
                    upper,
                    ka.clone(),
                    kb.clone(),
                    ts_a.clone(),
                    ts_b.clone(),
                    f.clone(),
                )
                .outer(left.clone(), right.clone()))
            },
        )
    }
}

/// Stands in for a join declared wrongly (the job is refused when it is built).
struct NoJoin<A, B, O>(PhantomData<fn(A, B) -> O>);

impl<A, B, O> Clone for NoJoin<A, B, O> {
    fn clone(&self) -> Self {
        Self(PhantomData)
    }
}

impl<A: 'static, B: 'static, O: 'static> CoProcessFunction for NoJoin<A, B, O> {
    type In1 = A;
    type In2 = B;
    type Out = O;
    fn process_element1(&mut self, _: A, _: &mut Vec<O>) {}
    fn process_element2(&mut self, _: B, _: &mut Vec<O>) {}
}

/// A stream connected with a broadcast stream.
pub struct BroadcastConnectedStreams<A, B> {
    connected: ConnectedStreams<A, B>,
}

impl<A: Data, B: Data> BroadcastConnectedStreams<A, B> {
    /// Runs a `BroadcastProcessFunction`: main-stream records read the broadcast
    /// state, broadcast records update it.
    pub fn process<P>(&self, f: P) -> DataStream<P::Out>
    where
        P: BroadcastProcessFunction<In = A, Broadcast = B>,
        P::Out: Data,
    {
        let main = self.connected.first.partition.clone();
        self.connected
            .two_input(
                "Broadcast Process",
                Some((main, EdgePartition::Broadcast)),
                move || {
                    let sides = crate::graph::take_side_outputs()?;
                    Ok(BroadcastProcess::new(f.clone()).with_side_outputs(sides))
                },
            )
            .edit(|n| n.open_side_outputs = true)
    }
}

/// A keyed stream connected with a broadcast stream.
pub struct KeyedBroadcastConnectedStreams<A, B, K, F> {
    connected: ConnectedStreams<A, B>,
    key: F,
    hash: EdgePartition,
    _k: PhantomData<fn() -> K>,
}

impl<A: Data, B: Data, K: Key, F> KeyedBroadcastConnectedStreams<A, B, K, F>
where
    F: Fn(&A) -> K + Clone + Send + Sync + 'static,
{
    /// Runs a `KeyedBroadcastProcessFunction`: main-stream records with their key's
    /// state and timers read the broadcast state; broadcast records update it and may
    /// visit every key's state.
    pub fn process<P>(&self, f: P) -> DataStream<P::Out>
    where
        P: KeyedBroadcastProcessFunction<Key = K, In = A, Broadcast = B>,
        P::Out: Data,
    {
        let key = self.key.clone();
        self.connected
            .two_input(
                "Keyed Broadcast Process",
                Some((self.hash.clone(), EdgePartition::Broadcast)),
                move || {
                    let sides = crate::graph::take_side_outputs()?;
                    Ok(KeyedBroadcastProcess::new(f.clone(), key.clone()).with_side_outputs(sides))
                },
            )
            .edit(|n| n.open_side_outputs = true)
    }
}

thread_local! {
    /// Scratch for reading one record's timestamp through a batch timestamp function.
    static ONE_TS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// The timestamps of a union of two streams' records, from each stream's own.
fn either_timestamps<A: 'static, B: 'static>(
    ta: TimestampsFn<A>,
    tb: TimestampsFn<B>,
) -> TimestampsFn<Either<A, B>> {
    Arc::new(move |batch: &[Either<A, B>], out: &mut Vec<u64>| {
        out.clear();
        ONE_TS.with(|one| {
            let mut one = one.borrow_mut();
            for r in batch {
                match r {
                    Either::Left(a) => ta(std::slice::from_ref(a), &mut one),
                    Either::Right(b) => tb(std::slice::from_ref(b), &mut one),
                }
                out.push(one.first().copied().unwrap_or(0));
            }
        });
    })
}

/// Gathers a window's records of both inputs of a join or co-group.
struct CoGroupAcc<A, B>(PhantomData<fn(A, B)>);

impl<A, B> Clone for CoGroupAcc<A, B> {
    fn clone(&self) -> Self {
        Self(PhantomData)
    }
}

impl<A: Data + Sync, B: Data + Sync> AggregateFunction for CoGroupAcc<A, B> {
    type In = Either<A, B>;
    /// Both sides' records, checkpointed with their wire encoding.
    type Acc = (Vec<WireState<A>>, Vec<WireState<B>>);
    type Out = (Vec<A>, Vec<B>);
    fn create_accumulator(&self) -> Self::Acc {
        (Vec::new(), Vec::new())
    }
    fn add(&self, value: &Either<A, B>, acc: &mut Self::Acc) {
        match value {
            Either::Left(a) => acc.0.push(WireState(a.clone())),
            Either::Right(b) => acc.1.push(WireState(b.clone())),
        }
    }
    fn get_result(&self, acc: &Self::Acc) -> Self::Out {
        (
            acc.0.iter().map(|w| w.0.clone()).collect(),
            acc.1.iter().map(|w| w.0.clone()).collect(),
        )
    }
    fn merge(&self, mut a: Self::Acc, mut b: Self::Acc) -> Self::Acc {
        a.0.append(&mut b.0);
        a.1.append(&mut b.1);
        a
    }
}

/// Two streams about to be joined in windows (Flink's `join`) or co-grouped
/// (`coGroup`): continue with `.where_(key1).equal_to(key2).window(assigner)`.
pub struct TwoStreams<A, B> {
    first: DataStream<A>,
    second: DataStream<B>,
    cogroup: bool,
}

impl<A: Data> DataStream<A> {
    /// Joins this stream with `other` in windows (Flink's `join`): records of both with
    /// equal keys in the same window are paired.
    pub fn join<B: Data>(&self, other: &DataStream<B>) -> TwoStreams<A, B> {
        TwoStreams {
            first: self.clone(),
            second: other.clone(),
            cogroup: false,
        }
    }

    /// Co-groups this stream with `other` in windows (Flink's `coGroup`): a key's
    /// records of both in a window reach one call.
    pub fn co_group<B: Data>(&self, other: &DataStream<B>) -> TwoStreams<A, B> {
        TwoStreams {
            first: self.clone(),
            second: other.clone(),
            cogroup: true,
        }
    }
}

impl<A: Data, B: Data> TwoStreams<A, B> {
    /// The first stream's key.
    pub fn where_<K: Key, F1>(&self, key1: F1) -> TwoStreamsWhere<A, B, K, F1>
    where
        F1: Fn(&A) -> K + Clone + Send + Sync + 'static,
    {
        TwoStreamsWhere {
            first: self.first.clone(),
            second: self.second.clone(),
            cogroup: self.cogroup,
            key1,
            _k: PhantomData,
        }
    }
}

/// A join or co-group with its first key.
pub struct TwoStreamsWhere<A, B, K, F1> {
    first: DataStream<A>,
    second: DataStream<B>,
    cogroup: bool,
    key1: F1,
    _k: PhantomData<fn() -> K>,
}

impl<A: Data, B: Data, K: Key, F1> TwoStreamsWhere<A, B, K, F1>
where
    F1: Fn(&A) -> K + Clone + Send + Sync + 'static,
{
    /// The second stream's key (of the same type).
    pub fn equal_to<F2>(&self, key2: F2) -> TwoStreamsKeyed<A, B, K, F1, F2>
    where
        F2: Fn(&B) -> K + Clone + Send + Sync + 'static,
    {
        TwoStreamsKeyed {
            first: self.first.clone(),
            second: self.second.clone(),
            cogroup: self.cogroup,
            key1: self.key1.clone(),
            key2,
            _k: PhantomData,
        }
    }
}

/// A join or co-group with both keys.
pub struct TwoStreamsKeyed<A, B, K, F1, F2> {
    first: DataStream<A>,
    second: DataStream<B>,
    cogroup: bool,
    key1: F1,
    key2: F2,
    _k: PhantomData<fn() -> K>,
}

impl<A, B, K, F1, F2> TwoStreamsKeyed<A, B, K, F1, F2>
where
    A: Data + Sync,
    B: Data + Sync,
    K: Key,
    F1: Fn(&A) -> K + Clone + Send + Sync + 'static,
    F2: Fn(&B) -> K + Clone + Send + Sync + 'static,
{
    /// The windows both streams are cut into.
    pub fn window(&self, assigner: WindowAssigner) -> JoinWindows<A, B, K, F1, F2> {
        JoinWindows {
            first: self.first.clone(),
            second: self.second.clone(),
            cogroup: self.cogroup,
            key1: self.key1.clone(),
            key2: self.key2.clone(),
            assigner,
            trigger: Trigger::default(),
            lateness_ns: 0,
            _k: PhantomData,
        }
    }
}

/// A join or co-group in windows: finish with `apply`.
pub struct JoinWindows<A, B, K, F1, F2> {
    first: DataStream<A>,
    second: DataStream<B>,
    cogroup: bool,
    key1: F1,
    key2: F2,
    assigner: WindowAssigner,
    trigger: Trigger,
    lateness_ns: u64,
    _k: PhantomData<fn() -> K>,
}

impl<A, B, K, F1, F2> JoinWindows<A, B, K, F1, F2>
where
    A: Data + Sync,
    B: Data + Sync,
    K: Key,
    F1: Fn(&A) -> K + Clone + Send + Sync + 'static,
    F2: Fn(&B) -> K + Clone + Send + Sync + 'static,
{
    /// Fires the windows as `trigger` says.
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// Keeps windows open `lateness` past their end.
    pub fn allowed_lateness(mut self, lateness: std::time::Duration) -> Self {
        self.lateness_ns = u64::try_from(lateness.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// Both streams as one keyed, windowed stream of `Either`, as Flink builds joins.
    #[allow(clippy::type_complexity)] // The key selector is a closure: it has no name.
    fn windowed(
        &self,
    ) -> WindowedStream<Either<A, B>, K, impl Fn(&Either<A, B>) -> K + Clone + Send + Sync + 'static>
    {
        let name = if self.cogroup { "CoGroup" } else { "Join" };
        let left = self
            .first
            .map(Either::<A, B>::Left)
            .name(&format!("{name} Left"));
        let right = self
            .second
            .map(Either::<A, B>::Right)
            .name(&format!("{name} Right"));
        let mut both = left.union(&[right]);
        both.timestamps = match (&self.first.timestamps, &self.second.timestamps) {
            (Some(ta), Some(tb)) => Some(either_timestamps(ta.clone(), tb.clone())),
            _ => None,
        };
        let (k1, k2) = (self.key1.clone(), self.key2.clone());
        let mut w = both
            .key_by(move |e: &Either<A, B>| match e {
                Either::Left(a) => k1(a),
                Either::Right(b) => k2(b),
            })
            .window(self.assigner)
            .trigger(self.trigger);
        w.lateness_ns = self.lateness_ns;
        w
    }

    /// Co-group: `f(key, window, firsts, seconds, out)` once per key and window with
    /// records (Flink's `CoGroupFunction`; one side may be empty).
    pub fn apply_co_group<O, P>(&self, f: P) -> DataStream<O>
    where
        O: Data,
        P: Fn(&K, &Window, &[A], &[B], &mut Vec<O>) + Clone + Send + Sync + 'static,
    {
        self.windowed()
            .window_node(
                CoGroupAcc::<A, B>(PhantomData),
                move |k: &K, w: &Window, (xs, ys): (Vec<A>, Vec<B>), out: &mut Vec<O>| {
                    f(k, w, &xs, &ys, out)
                },
            )
            .name(if self.cogroup { "CoGroup" } else { "Join" })
    }

    /// Join: `f(first, second)` for every pair of records with equal keys in one window
    /// (Flink's `JoinFunction`), in each window that fires.
    pub fn apply<O, P>(&self, f: P) -> DataStream<O>
    where
        O: Data,
        P: Fn(&A, &B) -> O + Clone + Send + Sync + 'static,
    {
        self.apply_co_group(move |_, _, xs: &[A], ys: &[B], out: &mut Vec<O>| {
            for x in xs {
                for y in ys {
                    out.push(f(x, y));
                }
            }
        })
    }
}
