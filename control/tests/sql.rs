//! SQL on the MiniCluster: each query class against a reference computation over the
//! same generated rows, at parallelism 1 and 2; errors name the problem and where.
#![allow(clippy::unwrap_used, clippy::panic)]

use spate::api::StreamExecutionEnvironment;
use spate::config::Config;
use spate::graph::JobGraph;
use spate::jobs::JobSpec;
use spate::minicluster::{JobStatus, MiniCluster};
use spate::sql::connector::Datagen;
use spate::sql::types::{Row, RowKind, Value};
use spate::sql::{parse, Outcome, Session, SqlError};
use spate_dataplane::idle::IdleStrategyKind;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROWS: u64 = 20_000;
const START_MS: i64 = 1_704_067_200_000; // 2024-01-01 00:00:00

fn config() -> Config {
    Config {
        slots: 2,
        idle: IdleStrategyKind::Backoff,
        ring_size: 1 << 16,
        ..Config::default()
    }
}

/// `bids`: auction 1..=20, price 1..=1000, a bidder name, and an event time 1 ms per
/// row, up to 30 ms early (the watermark allows 50 ms).
fn ddl() -> String {
    format!(
        "CREATE TABLE bids (
           auction BIGINT,
           price   BIGINT,
           bidder  STRING,
           ts      TIMESTAMP(3),
           WATERMARK FOR ts AS ts - INTERVAL '50' MILLISECOND
         ) WITH (
           'connector' = 'datagen',
           'rows-per-second' = '0',
           'number-of-rows' = '{ROWS}',
           'seed' = '7',
           'fields.auction.min' = '1', 'fields.auction.max' = '20',
           'fields.price.min' = '1', 'fields.price.max' = '1000',
           'fields.bidder.length' = '3',
           'fields.ts.start' = '2024-01-01 00:00:00',
           'fields.ts.max-past' = '30ms'
         );"
    )
}

/// The rows the `bids` table generates, as a reference computation sees them.
fn reference_rows(session: &Session) -> Vec<Row> {
    let gen = Datagen::from_table(&session.catalog.tables["bids"]).unwrap();
    (0..ROWS).map(|i| gen.row(i, 0)).collect()
}

/// Runs `query` (after the DDL) at parallelism `p` and returns its rows.
fn run_query(query: &str, p: usize) -> (Vec<Row>, Session) {
    run_with(&ddl(), query, p)
}

/// Runs `query` after `ddl` at parallelism `p` and returns its rows.
fn run_with(ddl: &str, query: &str, p: usize) -> (Vec<Row>, Session) {
    let env = StreamExecutionEnvironment::new("sql");
    env.set_parallelism(p);
    let mut session = Session::new();
    let mut rel = None;
    for s in parse::script(&format!("{ddl}\n{query}")).unwrap() {
        if let Outcome::Query(r) = session.execute(&env, &s).unwrap() {
            rel = Some(r);
        }
    }
    let out = Arc::new(Mutex::new(Vec::new()));
    rel.unwrap().stream.collect(out.clone());
    run_env(&env);
    let rows = out.lock().unwrap().clone();
    (rows, session)
}

/// Runs the job declared on `env` to its end.
fn run_env(env: &StreamExecutionEnvironment) {
    execute(&JobGraph::build(env.stream_graph(), None, 1, true).unwrap());
}

/// Runs `graph` on a MiniCluster; it must finish.
fn execute(graph: &JobGraph) {
    let mut mc = MiniCluster::start(&config()).unwrap();
    let r = mc
        .execute(
            graph,
            &AtomicBool::new(false),
            Duration::from_secs(60),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(r.status, JobStatus::Finished);
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) | Value::Ts(i) => *i,
        other => panic!("not an integer: {other:?}"),
    }
}

fn sorted(mut v: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    v.sort_by_key(|r| format!("{r:?}"));
    v
}

#[test]
fn projection_and_filter_equal_the_reference() {
    for p in [1, 2] {
        let (rows, session) = run_query(
            "SELECT auction, price * 2 AS doubled, UPPER(bidder) AS who, \
                    CASE WHEN price > 900 THEN 'high' ELSE 'low' END AS band \
             FROM bids WHERE price > 500 AND auction <> 3;",
            p,
        );
        let want: Vec<Vec<Value>> = reference_rows(&session)
            .into_iter()
            .filter(|r| int(&r.values[1]) > 500 && int(&r.values[0]) != 3)
            .map(|r| {
                let price = int(&r.values[1]);
                let Value::Str(b) = &r.values[2] else {
                    panic!()
                };
                vec![
                    r.values[0].clone(),
                    Value::Int(price * 2),
                    Value::Str(b.to_uppercase().into()),
                    Value::Str(if price > 900 { "high" } else { "low" }.into()),
                ]
            })
            .collect();
        assert!(!want.is_empty());
        assert!(rows.iter().all(|r| r.kind == RowKind::Insert));
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "parallelism {p}");
    }
}

/// Projections of plain columns move values out of the input row: a column taken
/// twice, reordered, through a view and a subquery, comes out whole each time.
#[test]
fn plain_column_projections_through_views_equal_the_reference() {
    let ddl = format!(
        "{}\nCREATE VIEW v AS SELECT bidder, auction, price AS p FROM bids WHERE price > 100;",
        ddl()
    );
    for p in [1, 2] {
        let (rows, session) = run_with(
            &ddl,
            "SELECT bidder, p, bidder AS again, auction, p AS p2 \
             FROM (SELECT p, bidder, auction FROM v) WHERE auction <> 4;",
            p,
        );
        let want: Vec<Vec<Value>> = reference_rows(&session)
            .into_iter()
            .filter(|r| int(&r.values[1]) > 100 && int(&r.values[0]) != 4)
            .map(|r| {
                let v = &r.values;
                vec![
                    v[2].clone(),
                    v[1].clone(),
                    v[2].clone(),
                    v[0].clone(),
                    v[1].clone(),
                ]
            })
            .collect();
        assert!(!want.is_empty());
        assert!(want
            .iter()
            .all(|r| matches!(&r[0], Value::Str(s) if s.len() == 3)));
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "parallelism {p}");
    }
}

/// `q.*` beside plain columns (each column once, in place), a view with a global
/// aggregate read for its rows (one row, not one per input row), and a view left
/// stale by a dropped table (an error, as with every column).
#[test]
fn qualified_stars_global_aggregate_views_and_stale_views() {
    let (rows, session) = run_query(
        "SELECT b.*, price FROM (SELECT auction, price FROM bids) AS b;",
        1,
    );
    let want: Vec<Vec<Value>> = reference_rows(&session)
        .into_iter()
        .map(|r| {
            vec![
                r.values[0].clone(),
                r.values[1].clone(),
                r.values[1].clone(),
            ]
        })
        .collect();
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(sorted(got), sorted(want));

    let with_view = format!(
        "{}\nCREATE VIEW v AS SELECT 'total' AS label, COUNT(*) AS n FROM bids;",
        ddl()
    );
    let (rows, _) = run_with(&with_view, "SELECT COUNT(*) AS c FROM v;", 1);
    let last = rows
        .iter()
        .rev()
        .find(|r| matches!(r.kind, RowKind::Insert | RowKind::UpdateAfter))
        .unwrap();
    assert_eq!(last.values, vec![Value::Int(1)], "one row in the view");

    let env = StreamExecutionEnvironment::new("sql");
    let mut session = Session::new();
    let mut last = None;
    for s in parse::script(&format!(
        "{}\nCREATE VIEW bv AS SELECT auction, price FROM bids;\n\
         DROP TABLE bids;\n\
         CREATE TABLE bids (auction BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '10');\n\
         SELECT auction FROM bv;",
        ddl()
    ))
    .unwrap()
    {
        last = Some(session.execute(&env, &s));
    }
    let e = last.unwrap().err().unwrap();
    assert!(e.to_string().contains("price"), "{e}");
}

/// Per (window start, auction): count, sum, min, max, avg, distinct bidders, and the
/// count of prices above 500, over windows of `size_ms` starting every `slide_ms`.
fn window_reference(session: &Session, size_ms: i64, slide_ms: i64) -> Vec<Vec<Value>> {
    windows_reference(session, |ts| {
        // Every window [s, s + size) with s a multiple of the slide that holds ts.
        let mut out = Vec::new();
        let mut s = ts - ts.rem_euclid(slide_ms);
        while s > ts - size_ms {
            out.push((s, s + size_ms));
            s -= slide_ms;
        }
        out
    })
}

/// As `window_reference`, over the windows `windows(ts)` gives a row's time.
fn windows_reference(
    session: &Session,
    windows: impl Fn(i64) -> Vec<(i64, i64)>,
) -> Vec<Vec<Value>> {
    type Acc = (i64, i64, i64, i64, HashSet<String>, i64);
    let mut groups: BTreeMap<(i64, i64, i64), Acc> = BTreeMap::new();
    for r in reference_rows(session) {
        let (auction, price, ts) = (int(&r.values[0]), int(&r.values[1]), int(&r.values[3]));
        let Value::Str(bidder) = &r.values[2] else {
            panic!()
        };
        for (s, e) in windows(ts) {
            let g = groups.entry((s, e, auction)).or_insert((
                0,
                0,
                i64::MAX,
                i64::MIN,
                HashSet::new(),
                0,
            ));
            g.0 += 1;
            g.1 += price;
            g.2 = g.2.min(price);
            g.3 = g.3.max(price);
            g.4.insert(bidder.to_string());
            g.5 += i64::from(price > 500);
        }
    }
    groups
        .into_iter()
        .map(|((s, e, auction), (n, sum, min, max, bidders, high))| {
            vec![
                Value::Ts(s),
                Value::Ts(e),
                Value::Int(auction),
                Value::Int(n),
                Value::Int(sum),
                Value::Int(min),
                Value::Int(max),
                Value::Int(sum / n),
                Value::Int(bidders.len() as i64),
                Value::Int(high),
            ]
        })
        .collect()
}

const WINDOW_SELECT: &str = "SELECT window_start, window_end, auction, COUNT(*), SUM(price), \
     MIN(price), MAX(price), AVG(price), COUNT(DISTINCT bidder), \
     COUNT(*) FILTER (WHERE price > 500)";

#[test]
fn tumbling_window_aggregates_equal_the_reference() {
    for p in [1, 2] {
        let (rows, session) = run_query(
            &format!(
                "{WINDOW_SELECT} FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '1' SECOND)) \
                 GROUP BY window_start, window_end, auction;"
            ),
            p,
        );
        let want = window_reference(&session, 1000, 1000);
        assert!(want.len() > 100, "{}", want.len());
        // 'fields.ts.start' places the first rows in the first second of 2024.
        assert_eq!(want.iter().map(|r| int(&r[0])).min(), Some(START_MS - 1000));
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "parallelism {p}");
    }
}

#[test]
fn hopping_window_aggregates_equal_the_reference() {
    for p in [1, 2] {
        let (rows, session) = run_query(
            &format!(
                "{WINDOW_SELECT} FROM TABLE(HOP(TABLE bids, DESCRIPTOR(ts), INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND)) \
                 GROUP BY window_start, window_end, auction HAVING COUNT(*) > 10;"
            ),
            p,
        );
        let want: Vec<Vec<Value>> = window_reference(&session, 2000, 500)
            .into_iter()
            // Windows before the first row's time still hold rows: keep all.
            .filter(|r| int(&r[3]) > 10)
            .collect();
        assert!(want.len() > 100, "{}", want.len());
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "parallelism {p}");
    }
}

#[test]
fn cumulating_windows_and_legacy_group_windows_equal_the_reference() {
    for p in [1, 2] {
        let (rows, session) = run_query(
            &format!(
                "{WINDOW_SELECT} FROM TABLE(CUMULATE(TABLE bids, DESCRIPTOR(ts), INTERVAL '250' MILLISECOND, INTERVAL '1' SECOND)) \
                 GROUP BY window_start, window_end, auction;"
            ),
            p,
        );
        let want = windows_reference(&session, |ts| {
            let s = ts - ts.rem_euclid(1000);
            (1..=4)
                .map(|k| (s, s + 250 * k))
                .filter(|&(_, e)| e > ts)
                .collect()
        });
        assert!(want.len() > 400, "{}", want.len());
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "CUMULATE, parallelism {p}");
        // The legacy group window: GROUP BY TUMBLE(...) and TUMBLE_START/TUMBLE_END.
        let (rows, session) = run_query(
            "SELECT TUMBLE_START(ts, INTERVAL '1' SECOND), TUMBLE_END(ts, INTERVAL '1' SECOND), \
               auction, COUNT(*), SUM(price), MIN(price), MAX(price), AVG(price), \
               COUNT(DISTINCT bidder), COUNT(*) FILTER (WHERE price > 500) \
             FROM bids GROUP BY auction, TUMBLE(ts, INTERVAL '1' SECOND);",
            p,
        );
        let want = window_reference(&session, 1000, 1000);
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "legacy TUMBLE, parallelism {p}");
    }
}

/// Per key, the sessions of its times with `gap`: (start, end, the indices).
fn sessions<K: Ord + Clone>(rows: &[(K, i64)], gap: i64) -> Vec<(K, i64, i64, Vec<usize>)> {
    let mut by_key: BTreeMap<K, Vec<(i64, usize)>> = BTreeMap::new();
    for (i, (k, ts)) in rows.iter().enumerate() {
        by_key.entry(k.clone()).or_default().push((*ts, i));
    }
    let mut out = Vec::new();
    for (k, mut times) in by_key {
        times.sort_unstable();
        let mut cur: Option<(i64, i64, Vec<usize>)> = None;
        for (ts, i) in times {
            // A row's window [ts, ts + gap) merges with a session it overlaps or
            // touches (as Flink's TimeWindow.intersects).
            match &mut cur {
                Some((_, end, members)) if ts <= *end => {
                    *end = (*end).max(ts + gap);
                    members.push(i);
                }
                _ => {
                    if let Some((s, e, m)) = cur.take() {
                        out.push((k.clone(), s, e, m));
                    }
                    cur = Some((ts, ts + gap, vec![i]));
                }
            }
        }
        if let Some((s, e, m)) = cur {
            out.push((k.clone(), s, e, m));
        }
    }
    out
}

#[test]
fn session_windows_equal_the_reference() {
    for p in [1, 2] {
        let (rows, session) = run_query(
            "SELECT auction, window_start, window_end, COUNT(*), SUM(price) \
             FROM TABLE(SESSION(TABLE bids PARTITION BY auction, DESCRIPTOR(ts), INTERVAL '60' MILLISECOND)) \
             GROUP BY auction, window_start, window_end;",
            p,
        );
        let all = reference_rows(&session);
        let keyed: Vec<(i64, i64)> = all
            .iter()
            .map(|r| (int(&r.values[0]), int(&r.values[3])))
            .collect();
        let want: Vec<Vec<Value>> = sessions(&keyed, 60)
            .into_iter()
            .map(|(auction, s, e, members)| {
                let sum: i64 = members.iter().map(|&i| int(&all[i].values[1])).sum();
                vec![
                    Value::Int(auction),
                    Value::Ts(s),
                    Value::Ts(e),
                    Value::Int(members.len() as i64),
                    Value::Int(sum),
                ]
            })
            .collect();
        // Sessions of several rows, and more than one per auction.
        assert!(want.len() > 40 && want.len() < 10_000, "{}", want.len());
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "SESSION, parallelism {p}");
    }
}

#[test]
fn aggregates_of_a_changelog_take_its_retractions() {
    for p in [1, 2] {
        // Per auction a count, updated with each bid; over those counts, MIN and MAX
        // (a retracted value leaves), COUNT(DISTINCT), SUM and COUNT(*).
        let (rows, session) = run_query(
            "SELECT MIN(n), MAX(n), COUNT(DISTINCT n), SUM(n), COUNT(*) \
             FROM (SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction);",
            p,
        );
        let mut counts: HashMap<i64, i64> = HashMap::new();
        for r in reference_rows(&session) {
            *counts.entry(int(&r.values[0])).or_default() += 1;
        }
        let n: Vec<i64> = counts.values().copied().collect();
        let distinct: HashSet<i64> = n.iter().copied().collect();
        let want = vec![
            Value::Int(*n.iter().min().unwrap()),
            Value::Int(*n.iter().max().unwrap()),
            Value::Int(distinct.len() as i64),
            Value::Int(ROWS as i64),
            Value::Int(20),
        ];
        let got = apply(&rows, 0);
        assert_eq!(got.len(), 1, "p={p}");
        assert_eq!(got[&vec![]], want, "p={p}");
        assert!(rows.iter().any(|r| r.kind == RowKind::UpdateBefore));
    }
}

#[test]
fn interval_joins_equal_the_reference() {
    for p in [1, 2] {
        let (rows, session) = run_query(
            "SELECT a.auction, a.price, b.price, b.ts FROM bids a JOIN bids b ON a.auction = b.auction \
               AND b.ts >= a.ts - INTERVAL '5' MILLISECOND AND a.ts > b.ts - INTERVAL '11' MILLISECOND \
             WHERE a.price > 500;",
            p,
        );
        let all = reference_rows(&session);
        let mut by_auction: HashMap<i64, Vec<&Row>> = HashMap::new();
        for r in &all {
            by_auction.entry(int(&r.values[0])).or_default().push(r);
        }
        let mut want = Vec::new();
        for a in all.iter().filter(|a| int(&a.values[1]) > 500) {
            for b in &by_auction[&int(&a.values[0])] {
                let d = int(&b.values[3]) - int(&a.values[3]);
                if (-5..=10).contains(&d) {
                    want.push(vec![
                        a.values[0].clone(),
                        a.values[1].clone(),
                        b.values[1].clone(),
                        b.values[3].clone(),
                    ]);
                }
            }
        }
        assert!(want.len() > 1000, "{}", want.len());
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "p={p}");
    }
    // One bound alone is no interval join: the condition stays the join's check.
    let (rows, session) = run_query(
        "SELECT a.auction, a.ts, b.ts FROM bids a, bids b WHERE a.auction = b.auction \
           AND a.price > 990 AND b.price > 990 AND a.ts >= b.ts + INTERVAL '1' SECOND;",
        2,
    );
    let high: Vec<Row> = reference_rows(&session)
        .into_iter()
        .filter(|r| int(&r.values[1]) > 990)
        .collect();
    let mut want = Vec::new();
    for a in &high {
        for b in &high {
            if a.values[0] == b.values[0] && int(&a.values[3]) >= int(&b.values[3]) + 1000 {
                want.push(vec![
                    a.values[0].clone(),
                    a.values[3].clone(),
                    b.values[3].clone(),
                ]);
            }
        }
    }
    assert!(!want.is_empty());
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(sorted(got), sorted(want), "one bound");
    // The plan says which join runs.
    let env = StreamExecutionEnvironment::new("explain");
    let mut session = Session::new();
    let mut plan = String::new();
    for s in parse::script(&format!(
        "{}\nEXPLAIN SELECT 1 FROM bids a, bids b WHERE a.auction = b.auction \
           AND b.ts BETWEEN a.ts - INTERVAL '5' MILLISECOND AND a.ts + INTERVAL '10' MILLISECOND;",
        ddl()
    ))
    .unwrap()
    {
        if let Outcome::Explain(text) = session.execute(&env, &s).unwrap() {
            plan = text;
        }
    }
    assert!(
        plan.contains("IntervalJoin") && plan.contains("[-5 ms, 10 ms]"),
        "{plan}"
    );
}

#[test]
fn window_joins_of_window_table_functions_equal_the_reference() {
    for p in [1, 2] {
        let tvf =
            "SELECT * FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '100' MILLISECOND))";
        let (rows, session) = run_query(
            &format!(
                "SELECT L.auction, L.window_start, COUNT(*) FROM ({tvf}) L JOIN ({tvf}) R \
                 ON L.auction = R.auction AND L.window_start = R.window_start AND L.window_end = R.window_end \
                 WHERE L.price > R.price \
                 GROUP BY L.auction, L.window_start, L.window_end;"
            ),
            p,
        );
        // Per auction and window: the pairs of its rows with the left price higher.
        let mut groups: BTreeMap<(i64, i64), Vec<i64>> = BTreeMap::new();
        for r in reference_rows(&session) {
            let ts = int(&r.values[3]);
            groups
                .entry((int(&r.values[0]), ts - ts.rem_euclid(100)))
                .or_default()
                .push(int(&r.values[1]));
        }
        let want: Vec<Vec<Value>> = groups
            .into_iter()
            .filter_map(|((a, s), prices)| {
                let n = prices
                    .iter()
                    .map(|x| prices.iter().filter(|y| x > y).count() as i64)
                    .sum::<i64>();
                (n > 0).then(|| vec![Value::Int(a), Value::Ts(s), Value::Int(n)])
            })
            .collect();
        assert!(want.len() > 1000, "{}", want.len());
        // The join runs per window, and so does the aggregate of its rows.
        assert!(rows.iter().all(|r| r.kind == RowKind::Insert));
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "p={p}");
    }
}

#[test]
fn order_by_and_limit_run_as_on_a_stream() {
    for p in [1, 2] {
        // By event time (then price, descending): every row, in order.
        let (rows, session) = run_query(
            "SELECT ts, price, auction FROM bids ORDER BY ts, price DESC;",
            p,
        );
        let mut want: Vec<(i64, i64)> = reference_rows(&session)
            .iter()
            .map(|r| (int(&r.values[3]), -int(&r.values[1])))
            .collect();
        want.sort();
        let got: Vec<(i64, i64)> = rows
            .iter()
            .map(|r| (int(&r.values[0]), -int(&r.values[1])))
            .collect();
        assert_eq!(got, want, "ORDER BY ts, p={p}");
        // The first rows by price: a changelog that ends at the top three.
        let (rows, session) = run_query(
            "SELECT auction, price FROM bids ORDER BY price DESC LIMIT 3;",
            p,
        );
        let mut prices: Vec<i64> = reference_rows(&session)
            .iter()
            .map(|r| int(&r.values[1]))
            .collect();
        prices.sort_unstable_by(|a, b| b.cmp(a));
        let mut live: Vec<i64> = Vec::new();
        for r in &rows {
            let price = int(&r.values[1]);
            match r.kind {
                RowKind::Insert | RowKind::UpdateAfter => live.push(price),
                RowKind::UpdateBefore | RowKind::Delete => {
                    let at = live.iter().position(|x| *x == price).unwrap();
                    live.remove(at);
                }
            }
        }
        live.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(live, prices[..3], "ORDER BY price DESC LIMIT 3, p={p}");
        // LIMIT alone: the first rows that come.
        let (rows, session) = run_query(
            "SELECT auction, price, bidder FROM bids WHERE price > 900 LIMIT 7;",
            p,
        );
        let all: HashSet<Vec<Value>> = reference_rows(&session)
            .into_iter()
            .map(|r| r.values[..3].to_vec())
            .collect();
        assert_eq!(rows.len(), 7, "LIMIT 7, p={p}");
        assert!(rows
            .iter()
            .all(|r| all.contains(&r.values) && int(&r.values[1]) > 900));
    }
}

#[test]
fn outer_joins_end_at_the_reference() {
    for (kind, keep_left, keep_right) in [
        ("LEFT", true, false),
        ("RIGHT", false, true),
        ("FULL OUTER", true, true),
    ] {
        for p in [1, 2] {
            let (rows, session) = run_query(
                &format!(
                    "SELECT a.auction, a.price, b.auction, b.price \
                     FROM (SELECT * FROM bids WHERE price > 990) a {kind} JOIN \
                          (SELECT * FROM bids WHERE price < 4) b \
                     ON a.auction = b.auction AND b.price < 3 AND a.auction < 15;"
                ),
                p,
            );
            // The changelog applied as a multiset.
            let mut got: HashMap<Vec<Value>, i64> = HashMap::new();
            for r in &rows {
                let d = match r.kind {
                    RowKind::Insert | RowKind::UpdateAfter => 1,
                    RowKind::UpdateBefore | RowKind::Delete => -1,
                };
                *got.entry(r.values.clone()).or_default() += d;
            }
            got.retain(|_, n| *n != 0);
            assert!(got.values().all(|n| *n > 0), "{kind} p={p}: {got:?}");
            let all = reference_rows(&session);
            let a: Vec<&Row> = all.iter().filter(|r| int(&r.values[1]) > 990).collect();
            let b: Vec<&Row> = all.iter().filter(|r| int(&r.values[1]) < 4).collect();
            let meets = |x: &Row, y: &Row| {
                x.values[0] == y.values[0] && int(&y.values[1]) < 3 && int(&x.values[0]) < 15
            };
            let mut want: HashMap<Vec<Value>, i64> = HashMap::new();
            let pair = |x: Option<&Row>, y: Option<&Row>| -> Vec<Value> {
                let side = |r: Option<&Row>| match r {
                    Some(r) => vec![r.values[0].clone(), r.values[1].clone()],
                    None => vec![Value::Null, Value::Null],
                };
                let mut v = side(x);
                v.extend(side(y));
                v
            };
            for x in &a {
                let partners: Vec<&&Row> = b.iter().filter(|y| meets(x, y)).collect();
                for y in &partners {
                    *want.entry(pair(Some(x), Some(y))).or_default() += 1;
                }
                if partners.is_empty() && keep_left {
                    *want.entry(pair(Some(x), None)).or_default() += 1;
                }
            }
            if keep_right {
                for y in &b {
                    if !a.iter().any(|x| meets(x, y)) {
                        *want.entry(pair(None, Some(y))).or_default() += 1;
                    }
                }
            }
            assert!(
                want.keys().any(|k| k[2].is_null() || k[0].is_null()),
                "{kind}: unmatched rows"
            );
            assert_eq!(got, want, "{kind} p={p}");
        }
    }
}

/// Each row of `a` with its partners in `b` (`meets`), an unmatched row of an outer
/// side with NULLs for the other side's `n` columns; `cols` picks a row's columns.
fn outer_reference(
    a: &[&Row],
    b: &[&Row],
    keep: (bool, bool),
    meets: impl Fn(&Row, &Row) -> bool,
    cols: impl Fn(&Row) -> Vec<Value>,
    n: (usize, usize),
) -> Vec<Vec<Value>> {
    let mut want = Vec::new();
    for x in a {
        let mut met = false;
        for y in b.iter().filter(|y| meets(x, y)) {
            met = true;
            let mut v = cols(x);
            v.extend(cols(y));
            want.push(v);
        }
        if !met && keep.0 {
            let mut v = cols(x);
            v.extend(std::iter::repeat_n(Value::Null, n.1));
            want.push(v);
        }
    }
    if keep.1 {
        for y in b.iter().filter(|y| !a.iter().any(|x| meets(x, y))) {
            let mut v = vec![Value::Null; n.0];
            v.extend(cols(y));
            want.push(v);
        }
    }
    want
}

/// The outer joins and the sides they keep (left, right).
const OUTER_KINDS: [(&str, (bool, bool)); 3] = [
    ("LEFT", (true, false)),
    ("RIGHT", (false, true)),
    ("FULL OUTER", (true, true)),
];

#[test]
fn outer_interval_joins_are_append_only_and_equal_the_reference() {
    for (kind, keep) in OUTER_KINDS {
        for p in [1, 2] {
            // A condition beyond the key and the interval (b.price < 8) decides
            // whether a pair meets, as in Flink: a row whose only partners fail it
            // goes padded.
            let (rows, session) = run_query(
                &format!(
                    "SELECT a.auction, a.price, a.ts, b.auction, b.price, b.ts \
                     FROM (SELECT * FROM bids WHERE price > 990) a {kind} JOIN \
                          (SELECT * FROM bids WHERE price < 10) b \
                     ON a.auction = b.auction AND b.price < 8 \
                       AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND;"
                ),
                p,
            );
            let all = reference_rows(&session);
            let a: Vec<&Row> = all.iter().filter(|r| int(&r.values[1]) > 990).collect();
            let b: Vec<&Row> = all.iter().filter(|r| int(&r.values[1]) < 10).collect();
            let meets = |x: &Row, y: &Row| {
                let d = int(&y.values[3]) - int(&x.values[3]);
                x.values[0] == y.values[0] && int(&y.values[1]) < 8 && (-1000..=2000).contains(&d)
            };
            let cols = |r: &Row| {
                vec![
                    r.values[0].clone(),
                    r.values[1].clone(),
                    r.values[3].clone(),
                ]
            };
            let want = outer_reference(&a, &b, keep, meets, cols, (3, 3));
            assert_outer_rows(rows, want, kind, p);
        }
    }
    let env = StreamExecutionEnvironment::new("explain");
    let mut session = Session::new();
    let mut plan = String::new();
    for s in parse::script(&format!(
        "{}\nEXPLAIN SELECT 1 FROM bids a LEFT JOIN bids b ON a.auction = b.auction \
           AND b.ts BETWEEN a.ts - INTERVAL '5' MILLISECOND AND a.ts + INTERVAL '10' MILLISECOND;",
        ddl()
    ))
    .unwrap()
    {
        if let Outcome::Explain(text) = session.execute(&env, &s).unwrap() {
            plan = text;
        }
    }
    assert!(
        plan.contains("IntervalJoin(joinType=[LeftOuterJoin]"),
        "{plan}"
    );
}

/// An outer join's rows against the reference's (`want`, left columns then right
/// columns, the first of each side never NULL unless padded): the reference has padded
/// rows and matched ones, and the join emitted inserts only (a padded row goes once
/// no partner can come, never retracted).
fn assert_outer_rows(rows: Vec<Row>, want: Vec<Vec<Value>>, kind: &str, p: usize) {
    let padded = |v: &Vec<Value>| v[0].is_null() || v[3].is_null();
    assert!(
        want.iter().any(padded) && !want.iter().all(padded),
        "{kind}"
    );
    assert!(
        rows.iter().all(|r| r.kind == RowKind::Insert),
        "{kind} p={p}"
    );
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(sorted(got), sorted(want), "{kind} p={p}");
}

#[test]
fn outer_window_joins_pad_at_the_window_end_and_equal_the_reference() {
    let tvf = "TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '100' MILLISECOND))";
    for (kind, keep) in OUTER_KINDS {
        for p in [1, 2] {
            let (rows, session) = run_query(
                &format!(
                    "SELECT L.auction, L.window_start, L.price, R.auction, R.window_start, R.price \
                     FROM (SELECT * FROM {tvf} WHERE price > 900) L {kind} JOIN \
                          (SELECT * FROM {tvf} WHERE price < 100) R \
                     ON L.auction = R.auction AND L.window_start = R.window_start \
                       AND L.window_end = R.window_end AND L.price > R.price + 850;"
                ),
                p,
            );
            let all = reference_rows(&session);
            let a: Vec<&Row> = all.iter().filter(|r| int(&r.values[1]) > 900).collect();
            let b: Vec<&Row> = all.iter().filter(|r| int(&r.values[1]) < 100).collect();
            let start = |r: &Row| {
                let ts = int(&r.values[3]);
                ts - ts.rem_euclid(100)
            };
            let meets = |x: &Row, y: &Row| {
                x.values[0] == y.values[0]
                    && start(x) == start(y)
                    && int(&x.values[1]) > int(&y.values[1]) + 850
            };
            let cols = |r: &Row| {
                vec![
                    r.values[0].clone(),
                    Value::Ts(start(r)),
                    r.values[1].clone(),
                ]
            };
            let want = outer_reference(&a, &b, keep, meets, cols, (3, 3));
            assert_outer_rows(rows, want, kind, p);
        }
    }
    // The kept side's window still bounds a window aggregate over the join's rows.
    let (rows, session) = run_query(
        &format!(
            "SELECT L.window_start, COUNT(*), COUNT(R.price) \
             FROM (SELECT * FROM {tvf} WHERE price > 900) L LEFT JOIN \
                  (SELECT * FROM {tvf} WHERE price < 100) R \
             ON L.auction = R.auction AND L.window_start = R.window_start AND L.window_end = R.window_end \
             GROUP BY L.window_start, L.window_end;"
        ),
        2,
    );
    assert!(rows.iter().all(|r| r.kind == RowKind::Insert));
    let all = reference_rows(&session);
    let mut want: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for x in all.iter().filter(|r| int(&r.values[1]) > 900) {
        let s = int(&x.values[3]) - int(&x.values[3]).rem_euclid(100);
        let partners = all
            .iter()
            .filter(|y| {
                int(&y.values[1]) < 100
                    && y.values[0] == x.values[0]
                    && int(&y.values[3]) - int(&y.values[3]).rem_euclid(100) == s
            })
            .count() as i64;
        let e = want.entry(s).or_default();
        e.0 += partners.max(1);
        e.1 += partners;
    }
    let want: Vec<Vec<Value>> = want
        .into_iter()
        .map(|(s, (n, m))| vec![Value::Ts(s), Value::Int(n), Value::Int(m)])
        .collect();
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(sorted(got), sorted(want));
}

#[test]
fn a_left_lookup_join_keeps_rows_that_find_nothing() {
    let dir = std::env::temp_dir().join(format!("spate-left-lookup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("names.csv");
    // Auctions 1..=10 have a name; 3's fails the ON condition.
    let text: String = (1..=10)
        .map(|k| {
            format!(
                "{k},{}\n",
                if k == 3 {
                    "skip".to_string()
                } else {
                    format!("n{k}")
                }
            )
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    let lookup = format!(
        "CREATE TABLE names (k BIGINT, v STRING) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');",
        file.display()
    );
    for p in [1, 2] {
        let (rows, session) = run_with(
            &format!("{}\n{lookup}", ddl()),
            "SELECT b.auction, b.price, s.k, s.v FROM (SELECT *, PROCTIME() AS pt FROM bids) b \
             LEFT JOIN names FOR SYSTEM_TIME AS OF b.pt AS s ON b.auction = s.k AND s.v <> 'skip';",
            p,
        );
        let want: Vec<Vec<Value>> = reference_rows(&session)
            .iter()
            .map(|r| {
                let k = int(&r.values[0]);
                let (sk, sv) = if k <= 10 && k != 3 {
                    (Value::Int(k), Value::Str(format!("n{k}").into()))
                } else {
                    (Value::Null, Value::Null)
                };
                vec![r.values[0].clone(), r.values[1].clone(), sk, sv]
            })
            .collect();
        assert!(rows.iter().all(|r| r.kind == RowKind::Insert));
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "p={p}");
    }
    // RIGHT and FULL lookup joins are refused with a reason.
    let env = StreamExecutionEnvironment::new("right");
    let mut session = Session::new();
    let mut error = None;
    for s in parse::script(&format!(
        "{}\n{lookup}\nSELECT * FROM (SELECT *, PROCTIME() AS pt FROM bids) b \
         RIGHT JOIN names FOR SYSTEM_TIME AS OF b.pt AS s ON b.auction = s.k;",
        ddl()
    ))
    .unwrap()
    {
        if let Err(e) = session.execute(&env, &s) {
            error = Some(e.to_string());
        }
    }
    let error = error.expect("a RIGHT lookup join is refused");
    assert!(error.contains("RIGHT or FULL lookup join"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A lookup table's files are read again once `'lookup.join.cache.ttl'` has passed;
/// a reload that fails keeps the rows read before.
#[test]
fn a_lookup_table_is_read_again_when_its_cache_expires() {
    let dir = std::env::temp_dir().join(format!("spate-lookup-ttl-{}", std::process::id()));
    let table = dir.join("names");
    std::fs::create_dir_all(&table).unwrap();
    let file = table.join("names.csv");
    let names = |tag: &str| -> String { (1..=20).map(|k| format!("{k},{tag}{k}\n")).collect() };
    // The file changes whole, by a rename, as a careful writer changes it.
    let replace = {
        let (dir, file) = (dir.clone(), file.clone());
        move |text: String| {
            let next = dir.join("next.csv");
            std::fs::write(&next, text).unwrap();
            std::fs::rename(&next, &file).unwrap();
        }
    };
    replace(names("old"));
    let ddl = format!(
        "CREATE TABLE trades (auction BIGINT, price BIGINT) WITH ( \
           'connector' = 'datagen', 'rows-per-second' = '1000', 'seed' = '3', \
           'fields.auction.min' = '1', 'fields.auction.max' = '20');
         CREATE TABLE names (k BIGINT, v STRING) WITH ('connector' = 'filesystem', \
           'path' = '{}', 'format' = 'csv', 'lookup.join.cache.ttl' = '100 ms');",
        table.display()
    );
    let query =
        "SELECT t.auction, t.price, s.k, s.v FROM (SELECT *, PROCTIME() AS pt FROM trades) t \
                 LEFT JOIN names FOR SYSTEM_TIME AS OF t.pt AS s ON t.auction = s.k;";
    let env = StreamExecutionEnvironment::new("lookup-ttl");
    env.set_parallelism(1);
    let mut session = Session::new();
    let mut rel = None;
    for s in parse::script(&format!("{ddl}\n{query}")).unwrap() {
        if let Outcome::Query(r) = session.execute(&env, &s).unwrap() {
            rel = Some(r);
        }
    }
    // The rows as they pass, for the writer to follow: at 1000 rows a second, the
    // 100 ms time to live is 100 rows.
    let seen = Arc::new(Mutex::new(Vec::<Row>::new()));
    let tap = seen.clone();
    rel.unwrap()
        .stream
        .map(move |r: Row| {
            tap.lock().unwrap().push(r.clone());
            r
        })
        .collect(Arc::new(Mutex::new(Vec::new())));
    let cancel = Arc::new(AtomicBool::new(false));
    let writer = {
        let (seen, cancel) = (seen.clone(), cancel.clone());
        std::thread::spawn(move || {
            let wait_for = |done: &dyn Fn(&[Row]) -> bool| {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !done(&seen.lock().unwrap()) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            };
            wait_for(&|rows| rows.len() >= 500);
            // A file that does not parse: the reloads fail and the old rows stay.
            replace("1,old1\nnot a number,x\n".to_string());
            wait_for(&|rows| rows.len() >= 1200);
            replace(names("new"));
            wait_for(&|rows| {
                rows.last()
                    .is_some_and(|r| matches!(&r.values[3], Value::Str(v) if v.starts_with("new")))
            });
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    // The source is unbounded: the job runs until the writer has seen the new names.
    let graph = JobGraph::build(env.stream_graph(), None, 1, true).unwrap();
    let mut mc = MiniCluster::start(&config()).unwrap();
    let r = mc
        .execute(&graph, &cancel, Duration::from_secs(120), &mut |_| {})
        .unwrap();
    writer.join().unwrap();
    assert_eq!(r.status, JobStatus::Canceled);
    let rows = seen.lock().unwrap().clone();
    let tags: Vec<&str> = rows
        .iter()
        .map(|r| match (&r.values[0], &r.values[2], &r.values[3]) {
            (a, k, Value::Str(v)) if a == k => &v[..3],
            other => panic!("a row that should have met its name: {other:?}"),
        })
        .collect();
    let switch = tags
        .iter()
        .position(|t| *t == "new")
        .expect("the table was read again");
    assert!(
        switch >= 1200,
        "the new names came before the file held them (row {switch})"
    );
    assert!(
        tags[..switch].iter().all(|t| *t == "old") && tags[switch..].iter().all(|t| *t == "new"),
        "old names, then new ones: {tags:?}"
    );
    // A time to live that is not a positive duration is refused.
    let bad = ddl.replace("'100 ms'", "'0 ms'");
    let env = StreamExecutionEnvironment::new("lookup-ttl-bad");
    let mut session = Session::new();
    let error = parse::script(&format!("{bad}\n{query}"))
        .unwrap()
        .iter()
        .find_map(|s| session.execute(&env, s).err())
        .expect("a zero time to live is refused");
    assert!(
        error
            .to_string()
            .contains("'lookup.join.cache.ttl' = '0 ms'"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn over_aggregates_equal_the_reference() {
    for p in [1, 2] {
        let (rows, session) = run_query(
            "SELECT auction, ts, price, \
               SUM(price) OVER w10 AS s, MAX(price) OVER w10 AS m, COUNT(*) OVER w10 AS n \
             FROM bids WINDOW w10 AS (PARTITION BY auction ORDER BY ts RANGE BETWEEN INTERVAL '10' MILLISECOND PRECEDING AND CURRENT ROW);",
            p,
        );
        let all = reference_rows(&session);
        let mut by_auction: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for r in &all {
            by_auction
                .entry(int(&r.values[0]))
                .or_default()
                .push((int(&r.values[3]), int(&r.values[1])));
        }
        let mut want = Vec::new();
        for (a, rows) in &by_auction {
            for (ts, price) in rows {
                let frame: Vec<i64> = rows
                    .iter()
                    .filter(|(t, _)| *t >= ts - 10 && *t <= *ts)
                    .map(|(_, p)| *p)
                    .collect();
                want.push(vec![
                    Value::Int(*a),
                    Value::Ts(*ts),
                    Value::Int(*price),
                    Value::Int(frame.iter().sum()),
                    Value::Int(*frame.iter().max().unwrap()),
                    Value::Int(frame.len() as i64),
                ]);
            }
        }
        assert!(rows.iter().all(|r| r.kind == RowKind::Insert));
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(got.len(), ROWS as usize, "p={p}");
        assert_eq!(sorted(got), sorted(want), "RANGE, p={p}");
        // ROWS: the row and the two before it in time (no ties at one auction's
        // times here: each auction's rows keep their times apart).
        let (rows, session) = run_query(
            "SELECT auction, ts, AVG(price) OVER (PARTITION BY auction ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) \
             FROM bids WHERE auction = 3;",
            p,
        );
        let mut mine: Vec<(i64, i64)> = reference_rows(&session)
            .iter()
            .filter(|r| int(&r.values[0]) == 3)
            .map(|r| (int(&r.values[3]), int(&r.values[1])))
            .collect();
        mine.sort();
        let distinct: HashSet<i64> = mine.iter().map(|m| m.0).collect();
        if distinct.len() == mine.len() {
            let want: Vec<Vec<Value>> = (0..mine.len())
                .map(|i| {
                    let frame = &mine[i.saturating_sub(2)..=i];
                    let avg = frame.iter().map(|m| m.1).sum::<i64>() / frame.len() as i64;
                    vec![Value::Int(3), Value::Ts(mine[i].0), Value::Int(avg)]
                })
                .collect();
            let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
            assert_eq!(sorted(got), sorted(want), "ROWS, p={p}");
        } else {
            assert_eq!(rows.len(), mine.len(), "ROWS, p={p}");
        }
    }
}

#[test]
fn unbounded_group_by_emits_a_changelog_that_ends_at_the_reference() {
    for p in [1, 2] {
        let (rows, session) = run_query(
            "SELECT auction, COUNT(*) AS n, SUM(price) AS total FROM bids GROUP BY auction;",
            p,
        );
        // Apply the changelog: each key's -U must retract exactly the row before.
        let mut table: HashMap<Value, Vec<Value>> = HashMap::new();
        for r in &rows {
            let key = r.values[0].clone();
            match r.kind {
                RowKind::Insert => assert!(table.insert(key, r.values.clone()).is_none()),
                RowKind::UpdateBefore => assert_eq!(table.remove(&key).as_ref(), Some(&r.values)),
                RowKind::UpdateAfter => assert!(table.insert(key, r.values.clone()).is_none()),
                RowKind::Delete => panic!("no HAVING: nothing is deleted"),
            }
        }
        let mut want: HashMap<Value, (i64, i64)> = HashMap::new();
        for r in reference_rows(&session) {
            let e = want.entry(r.values[0].clone()).or_default();
            e.0 += 1;
            e.1 += int(&r.values[1]);
        }
        assert_eq!(table.len(), want.len(), "parallelism {p}");
        for (k, (n, total)) in want {
            assert_eq!(table[&k], vec![k.clone(), Value::Int(n), Value::Int(total)]);
        }
        // One +I per key, then a -U/+U pair per further row.
        assert_eq!(rows.len() as u64, 20 + 2 * (ROWS - 20), "parallelism {p}");
    }
}

/// With `table.exec.mini-batch.enabled`, a key's changes within one input batch go out
/// as one update: the changelog is a valid one (each -U retracts the row before),
/// shorter, and ends at the same table; HAVING's deletions too.
#[test]
fn mini_batch_group_by_ends_at_the_reference_with_fewer_updates() {
    for p in [1, 2] {
        let (rows, session) = run_query(
            "SET 'table.exec.mini-batch.enabled' = 'true';\n\
             SELECT auction, COUNT(*) AS n, SUM(price) AS total FROM bids GROUP BY auction \
             HAVING SUM(price) % 7 <> 3;",
            p,
        );
        let mut table: HashMap<Value, Vec<Value>> = HashMap::new();
        for r in &rows {
            let key = r.values[0].clone();
            match r.kind {
                RowKind::Insert | RowKind::UpdateAfter => {
                    assert!(table.insert(key, r.values.clone()).is_none(), "{r:?}")
                }
                RowKind::UpdateBefore | RowKind::Delete => {
                    assert_eq!(table.remove(&key).as_ref(), Some(&r.values))
                }
            }
        }
        let mut want: HashMap<Value, (i64, i64)> = HashMap::new();
        for r in reference_rows(&session) {
            let e = want.entry(r.values[0].clone()).or_default();
            e.0 += 1;
            e.1 += int(&r.values[1]);
        }
        want.retain(|_, (_, total)| *total % 7 != 3);
        assert_eq!(table.len(), want.len(), "parallelism {p}");
        for (k, (n, total)) in want {
            assert_eq!(table[&k], vec![k.clone(), Value::Int(n), Value::Int(total)]);
        }
        // Far fewer than the -U/+U pair per row without mini-batches.
        assert!(
            (rows.len() as u64) < ROWS / 2,
            "{} rows at parallelism {p}",
            rows.len()
        );
    }
    // EXPLAIN says so, and a bad value is refused.
    let env = StreamExecutionEnvironment::new("sql");
    let mut session = Session::new();
    let mut text = String::new();
    for s in parse::script(&format!(
        "{}\nSET 'table.exec.mini-batch.enabled' = 'true';\n\
         EXPLAIN SELECT auction, COUNT(*) FROM bids GROUP BY auction;",
        ddl()
    ))
    .unwrap()
    {
        if let Outcome::Explain(t) = session.execute(&env, &s).unwrap() {
            text = t;
        }
    }
    assert!(text.contains("miniBatch=[true]"), "{text}");
    let mut session = Session::new();
    let mut last = None;
    for s in parse::script(&format!(
        "{}\nSET 'table.exec.mini-batch.enabled' = 'yes';\n\
         SELECT auction, COUNT(*) FROM bids GROUP BY auction;",
        ddl()
    ))
    .unwrap()
    {
        last = Some(session.execute(&env, &s));
    }
    let e = last.unwrap().err().unwrap();
    assert!(e.to_string().contains("mini-batch.enabled"), "{e}");
}

#[test]
fn a_script_job_writes_its_statement_set_to_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let script = format!(
        "{}\nCREATE TABLE cheap (auction BIGINT, price BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');\n\
         CREATE TABLE dear (auction BIGINT, bidder STRING) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');\n\
         EXECUTE STATEMENT SET BEGIN\n\
           INSERT INTO cheap SELECT auction, price FROM bids WHERE price < 10;\n\
           INSERT INTO dear SELECT auction, bidder FROM bids WHERE price > 995;\n\
         END;",
        ddl(),
        a.display(),
        b.display()
    );
    let mut spec = JobSpec::new("sql");
    spec.args = vec![script];
    spec.parallelism = Some(2);
    execute(&spec.job_graph(1, true).unwrap());
    let read = |d: &std::path::Path| -> Vec<String> {
        let mut lines = Vec::new();
        for f in std::fs::read_dir(d).unwrap() {
            let f = f.unwrap().path();
            if !f.file_name().unwrap().to_string_lossy().starts_with('.') {
                lines.extend(
                    std::fs::read_to_string(f)
                        .unwrap()
                        .lines()
                        .map(String::from),
                );
            }
        }
        lines.sort();
        lines
    };
    let mut session = Session::new();
    session
        .execute(
            &StreamExecutionEnvironment::new("x"),
            &parse::script(&ddl()).unwrap()[0],
        )
        .unwrap();
    let rows = reference_rows(&session);
    let mut want_a: Vec<String> = rows
        .iter()
        .filter(|r| int(&r.values[1]) < 10)
        .map(|r| format!("{},{}", int(&r.values[0]), int(&r.values[1])))
        .collect();
    want_a.sort();
    let mut want_b: Vec<String> = rows
        .iter()
        .filter(|r| int(&r.values[1]) > 995)
        .map(|r| {
            let Value::Str(s) = &r.values[2] else {
                panic!()
            };
            format!("{{\"auction\":{},\"bidder\":\"{s}\"}}", int(&r.values[0]))
        })
        .collect();
    want_b.sort();
    assert!(!want_a.is_empty() && !want_b.is_empty());
    assert_eq!(read(&a), want_a);
    assert_eq!(read(&b), want_b);
}

/// The error a statement gives after the DDL (whose 14 lines come first).
/// A SQL job rescales: `INSERT INTO` a filesystem table from a paced `datagen` table
/// at p=2, stopped with a savepoint a third of the way, resumes at p=3 (the source's
/// two splits go on in two subtasks, the third ends at once; the sink's pending parts
/// are committed by the new subtasks); read back, the table holds every generated
/// row exactly once.
#[test]
fn a_sql_job_stopped_with_a_savepoint_resumes_at_another_parallelism() {
    use spate::config::CheckpointConfig;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let paced = ddl().replace("'rows-per-second' = '0'", "'rows-per-second' = '20000'");
    assert_ne!(paced, ddl());
    let script = format!(
        "{paced}\nCREATE TABLE out (auction BIGINT, price BIGINT, bidder STRING, ts TIMESTAMP(3)) \
         WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');\n\
         INSERT INTO out SELECT auction, price, bidder, ts FROM bids;",
        out.display()
    );
    let cfg = |slots| Config {
        slots,
        checkpointing: CheckpointConfig {
            interval: Some(Duration::from_millis(20)),
            savepoint_dir: Some(dir.path().join("sp")),
            ..CheckpointConfig::default()
        },
        ..config()
    };
    let mut spec = JobSpec::new("sql");
    spec.args = vec![script];
    spec.parallelism = Some(2);
    let graph = spec.job_graph(1, true).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let stopper = std::thread::spawn(move || {
        // 20 000 rows at 20 000 a second: stop about a third in.
        std::thread::sleep(Duration::from_millis(300));
        c2.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let mut mc = MiniCluster::start(&cfg(2)).unwrap();
    let r = mc
        .execute(&graph, &cancel, Duration::from_secs(60), &mut |_| {})
        .unwrap();
    stopper.join().unwrap();
    assert_eq!(r.status, JobStatus::Finished, "{:?}", r.exceptions);
    let savepoint = r.savepoint.clone().expect("stopped with a savepoint");
    let first = r.progress.records;
    assert!(first > 0 && first < ROWS, "stopped in the middle: {first}");

    spec.parallelism = Some(3);
    let mut graph = spec.job_graph(1, true).unwrap();
    graph.restore_from = Some(savepoint);
    let mut mc = MiniCluster::start(&cfg(3)).unwrap();
    let r = mc
        .execute(
            &graph,
            &AtomicBool::new(false),
            Duration::from_secs(60),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(r.status, JobStatus::Finished, "{:?}", r.exceptions);

    let table = format!(
        "CREATE TABLE back (auction BIGINT, price BIGINT, bidder STRING, ts TIMESTAMP(3)) \
         WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');",
        out.display()
    );
    // The reference: the paced table's rows (their times follow its rate).
    let (rows, session) = run_with(&format!("{paced}\n{table}"), "SELECT * FROM back;", 1);
    let want = sorted(
        reference_rows(&session)
            .into_iter()
            .map(|r| r.values)
            .collect(),
    );
    let got = sorted(rows.into_iter().map(|r| r.values).collect());
    assert_eq!(got.len(), ROWS as usize);
    let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "rows differ from the reference");
}

#[test]
fn filesystem_tables_are_read_back_as_they_were_written() {
    let dir = tempfile::tempdir().unwrap();
    for (format, sub) in [("csv", "c"), ("json", "j")] {
        let path = dir.path().join(sub);
        // Written by one job (every column, a timestamp among them) ...
        let script = format!(
            "{}\nCREATE TABLE out (auction BIGINT, price BIGINT, bidder STRING, ts TIMESTAMP(3)) \
             WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = '{format}');\n\
             INSERT INTO out SELECT auction, price, bidder, ts FROM bids;",
            ddl(),
            path.display()
        );
        let mut spec = JobSpec::new("sql");
        spec.args = vec![script];
        spec.parallelism = Some(2);
        execute(&spec.job_graph(1, true).unwrap());
        // ... and read by another, at parallelism 1 and 2.
        for p in [1, 2] {
            let table = format!(
                "CREATE TABLE back (auction BIGINT, price BIGINT, bidder STRING, ts TIMESTAMP(3)) \
                 WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = '{format}');",
                path.display()
            );
            let (rows, session) =
                run_with(&format!("{}\n{table}", ddl()), "SELECT * FROM back;", p);
            let want: Vec<Vec<Value>> = reference_rows(&session)
                .into_iter()
                .map(|r| r.values)
                .collect();
            let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
            assert_eq!(got.len(), ROWS as usize, "{format} p={p}");
            assert_eq!(sorted(got), sorted(want), "{format} p={p}");
        }
    }
    // Quoted fields, NULLs, and a JSON file's missing keys.
    let f = dir.path().join("odd.csv");
    std::fs::write(
        &f,
        "1,\"a, \"\"quoted\"\" one\",2024-01-01 00:00:01.5\n\n2,,\n3,\"two\nlines\",\n",
    )
    .unwrap();
    let table = format!(
        "CREATE TABLE odd (id INT, s STRING, t TIMESTAMP(3)) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');",
        f.display()
    );
    let (rows, _) = run_with(&table, "SELECT * FROM odd;", 1);
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(
        sorted(got),
        sorted(vec![
            vec![
                Value::Int(1),
                Value::Str("a, \"quoted\" one".into()),
                Value::Ts(START_MS + 1500)
            ],
            vec![Value::Int(2), Value::Null, Value::Null],
            vec![Value::Int(3), Value::Str("two\nlines".into()), Value::Null],
        ])
    );
    let f = dir.path().join("odd.json");
    std::fs::write(
        &f,
        "{\"id\": 3, \"s\": \"x\"}\n{\"id\": 4.0, \"t\": \"2024-01-01 00:00:00\"}\n",
    )
    .unwrap();
    let table = format!(
        "CREATE TABLE odd (id BIGINT, s STRING, t TIMESTAMP(3)) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');",
        f.display()
    );
    let (rows, _) = run_with(&table, "SELECT * FROM odd;", 1);
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(
        sorted(got),
        sorted(vec![
            vec![Value::Int(3), Value::Str("x".into()), Value::Null],
            vec![Value::Int(4), Value::Null, Value::Ts(START_MS)],
        ])
    );
}

#[test]
fn a_socket_table_reads_what_its_server_sends() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut conn, _) = listener.accept().unwrap();
        // Records split across writes, a blank one, and a last one without its
        // delimiter.
        conn.write_all(b"1,alpha\n2,be").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        conn.write_all(b"ta\n\n3,\"gam,ma\"\n4,delta").unwrap();
    });
    let table = format!(
        "CREATE TABLE s (id BIGINT, name STRING) WITH ('connector' = 'socket', 'hostname' = '127.0.0.1', 'port' = '{port}', 'format' = 'csv');"
    );
    let (rows, _) = run_with(&table, "SELECT id * 10, UPPER(name) FROM s;", 2);
    server.join().unwrap();
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    let want: Vec<Vec<Value>> = [(10, "ALPHA"), (20, "BETA"), (30, "GAM,MA"), (40, "DELTA")]
        .iter()
        .map(|(i, s)| vec![Value::Int(*i), Value::Str((*s).into())])
        .collect();
    // (At parallelism 2 the rows spread over two subtasks after the source.)
    assert_eq!(sorted(got), sorted(want));
    // Bad options are named.
    let mut session = Session::new();
    let env = StreamExecutionEnvironment::new("x");
    for (opts, want) in [
        (
            "'hostname' = 'localhost', 'format' = 'csv'",
            "needs a 'port'",
        ),
        (
            "'hostname' = 'localhost', 'port' = '70000', 'format' = 'csv'",
            "is not a port",
        ),
        (
            "'hostname' = 'localhost', 'port' = '9', 'format' = 'xml'",
            "unknown format 'xml'",
        ),
        (
            "'hostname' = 'localhost', 'port' = '9', 'format' = 'csv', 'delim' = ','",
            "unknown option 'delim'",
        ),
    ] {
        let sql = format!("CREATE TABLE bad (a INT) WITH ('connector' = 'socket', {opts});");
        let Err(e) = session.execute(&env, &parse::script(&sql).unwrap()[0]) else {
            panic!("{opts}: accepted");
        };
        assert!(e.message.contains(want), "{opts}: {e}");
    }
}

fn error_of(sql: &str) -> SqlError {
    let env = StreamExecutionEnvironment::new("sql");
    let mut session = Session::new();
    let script = ddl() + "\n" + sql;
    let statements = match parse::script(&script) {
        Ok(s) => s,
        Err(e) => return e,
    };
    for s in statements {
        if let Err(e) = session.execute(&env, &s) {
            return e;
        }
    }
    panic!("no error from {sql}");
}

#[test]
fn errors_name_the_problem_and_its_position() {
    let ddl_lines = ddl().lines().count() as u64;
    let cases: &[(&str, &str, u64)] = &[
        ("SELECT price FROM bidz;", "unknown table 'bidz'", 19),
        ("SELECT pryce FROM bids;", "Column 'pryce' not found", 8),
        ("SELECT FOO(price) FROM bids;", "FOO", 8),
        ("SELECT price FROM bids WHERE bidder > 3;", "", 30),
        ("SELECT price FROM bids WHERE price + 1;", "WHERE must be a BOOLEAN", 30),
        ("SELECT price FROM bids WHERE price >;", "SQL parse error", 0),
        (
            "SELECT b.price FROM bids b CROSS JOIN bids c;",
            "unsupported: cross",
            0,
        ),
        (
            "SELECT b.price FROM bids b JOIN bids c ON b.price > c.price;",
            "needs an equality",
            0,
        ),
        (
            "SELECT auction, price FROM bids GROUP BY auction;",
            "column 'price' is neither grouped nor aggregated",
            17,
        ),
        (
            "SELECT window_start, COUNT(*) FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(price), INTERVAL '1' SECOND)) GROUP BY window_start, window_end;",
            "not a time attribute",
            72,
        ),
        (
            "SELECT * FROM TABLE(SESSION(TABLE bids PARTITION BY auction, DESCRIPTOR(ts), INTERVAL '1' SECOND));",
            "SESSION windows without an aggregate",
            0,
        ),
        (
            "SELECT price, window_start, COUNT(*) FROM TABLE(SESSION(TABLE bids PARTITION BY auction, DESCRIPTOR(ts), INTERVAL '1' SECOND)) GROUP BY price, window_start, window_end;",
            "groups by its PARTITION BY columns (auction)",
            1,
        ),
        (
            "SELECT window_start, COUNT(*) FROM TABLE(CUMULATE(TABLE bids, DESCRIPTOR(ts), INTERVAL '3' SECOND, INTERVAL '10' SECOND)) GROUP BY window_start, window_end;",
            "must be a multiple of its step",
            0,
        ),
        (
            "SELECT TUMBLE_START(ts, INTERVAL '2' SECOND), COUNT(*) FROM bids GROUP BY TUMBLE(ts, INTERVAL '1' SECOND);",
            "must name the GROUP BY's window: TUMBLE(ts, INTERVAL '1' SECOND)",
            8,
        ),
        (
            "SELECT COUNT(*) FROM bids GROUP BY HOP(ts, INTERVAL '1' SECOND);",
            "HOP takes 2 interval(s)",
            0,
        ),
        (
            "SELECT price FROM bids ORDER BY price;",
            "without LIMIT sorts by the event-time column",
            0,
        ),
        (
            "SELECT b.price FROM bids b JOIN bids FOR SYSTEM_TIME AS OF b.ts AS s ON b.auction = s.auction;",
            "unsupported: a temporal join in event time",
            60,
        ),
        (
            "SELECT b.price FROM (SELECT *, PROCTIME() AS p FROM bids) b JOIN bids FOR SYSTEM_TIME AS OF b.p AS s ON b.auction = s.auction;",
            "only a 'filesystem' table can be looked up",
            0,
        ),
    ];
    for (sql, want, column) in cases {
        let e = error_of(sql);
        assert!(e.message.contains(want), "{sql}: {e}");
        assert_eq!(e.line, ddl_lines + 1, "{sql}: {e}");
        if *column > 0 {
            assert_eq!(e.column, *column, "{sql}: {e}");
        }
    }
    // Bad connector options name the option.
    for (opts, want) in [
        (
            "'connector' = 'datagen', 'rows-per-secnd' = '5'",
            "unknown option 'rows-per-secnd'",
        ),
        (
            "'connector' = 'datagen', 'fields.nope.min' = '1'",
            "no column 'nope'",
        ),
        (
            "'connector' = 'datagen', 'number-of-rows' = 'many'",
            "'number-of-rows' takes an integer",
        ),
        ("'connector' = 'kafka'", "unknown connector 'kafka'"),
        (
            "'connector' = 'filesystem', 'path' = '/tmp/x'",
            "needs a 'format'",
        ),
    ] {
        let e = error_of(&format!("CREATE TABLE t (a BIGINT) WITH ({opts});"));
        assert!(e.message.contains(want), "{opts}: {e}");
        assert_eq!(e.line, ddl_lines + 1, "{opts}: {e}");
    }
    // A sink of another shape.
    let e = error_of(
        "CREATE TABLE s (a BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO s SELECT auction, price FROM bids;",
    );
    assert!(e.message.contains("the query has 2 columns"), "{e}");
    assert_eq!(e.line, ddl_lines + 2, "{e}");
    // Updates into a file are refused.
    let e = error_of(
        "CREATE TABLE s (a BIGINT, n BIGINT) WITH ('connector' = 'filesystem', 'path' = '/tmp/never', 'format' = 'csv');\nINSERT INTO s SELECT auction, COUNT(*) FROM bids GROUP BY auction;",
    );
    assert!(e.message.contains("only insertions"), "{e}");
}

// ---------------------------------------------------------------------------------
// Nexmark: the suite's query files against reference computations over the same events.

const NEXMARK_EVENTS: u64 = 30_000;

/// The suite's DDL, with fewer events, 1000 per second of event time from 23:59:50 (so
/// that the days of queries 15–17 change midway), and a fixed base time.
fn nexmark_ddl() -> String {
    let ddl = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../nexmark/ddl.sql"))
        .unwrap();
    let ddl = ddl
        .replace(
            "'events.num' = '10000000'",
            &format!("'events.num' = '{NEXMARK_EVENTS}'"),
        )
        .replace(
            "'next-event.rate' = '10000000'",
            "'next-event.rate' = '1000'",
        )
        .replace(
            "'bid.proportion' = '46'",
            "'bid.proportion' = '46', 'base-time' = '2024-01-01 23:59:50'",
        );
    assert!(ddl.contains("'base-time'") && ddl.contains(&NEXMARK_EVENTS.to_string()));
    ddl
}

/// A query file's SELECT (its INSERT INTO discard_sink, without the INSERT).
fn nexmark_select(q: &str) -> String {
    let text =
        std::fs::read_to_string(format!("{}/../nexmark/{q}.sql", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    let at = text.find("INSERT INTO discard_sink").unwrap();
    text[at + "INSERT INTO discard_sink".len()..].to_string()
}

/// The bids, as the `bid` view has them: auction, bidder, price, channel, url,
/// dateTime, extra.
fn nexmark_bids(session: &Session) -> Vec<Vec<Value>> {
    let gen = spate::sql::nexmark::Nexmark::from_table(&session.catalog.tables["nexmark"]).unwrap();
    let table = &session.catalog.tables["nexmark"];
    let col = |n: &str| table.physical.iter().position(|c| c.name == n).unwrap();
    let cols = [
        "bid.auction",
        "bid.bidder",
        "bid.price",
        "bid.channel",
        "bid.url",
        "bid.dateTime",
        "bid.extra",
    ]
    .map(col);
    (0..NEXMARK_EVENTS)
        .filter(|n| gen.kind(*n) == 2)
        .map(|n| {
            let r = gen.row(n, 0);
            cols.iter().map(|&i| r.values[i].clone()).collect()
        })
        .collect()
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

/// Applies a changelog; the final table, keyed by the first `key` columns.
fn apply(rows: &[Row], key: usize) -> HashMap<Vec<Value>, Vec<Value>> {
    let mut table = HashMap::new();
    for r in rows {
        let k = r.values[..key].to_vec();
        match r.kind {
            RowKind::Insert | RowKind::UpdateAfter => {
                assert!(table.insert(k, r.values.clone()).is_none(), "{r:?}")
            }
            RowKind::UpdateBefore | RowKind::Delete => {
                assert_eq!(table.remove(&k).as_ref(), Some(&r.values))
            }
        }
    }
    table
}

/// The Nexmark source generates only the columns a statement may read (through its
/// views), as EXPLAIN shows; a statement that selects `*` gets every column; both
/// give the bids the full table has.
#[test]
fn nexmark_sources_generate_only_the_columns_a_statement_reads() {
    let explain = |query: &str| -> String {
        let env = StreamExecutionEnvironment::new("sql");
        let mut session = Session::new();
        let mut text = None;
        for s in parse::script(&format!("{}\nEXPLAIN {query}", nexmark_ddl())).unwrap() {
            if let Outcome::Explain(t) = session.execute(&env, &s).unwrap() {
                text = Some(t);
            }
        }
        let text = text.unwrap();
        let scan = text
            .lines()
            .find(|l| l.contains("TableSourceScan"))
            .unwrap();
        scan[scan.find("fields=[").unwrap()..].to_string()
    };
    // q2 reads auction and price of the bid view (and event_type in its filter); the
    // table's computed dateTime reads the three kinds' times.
    assert_eq!(
        explain(&nexmark_select("q2")),
        "fields=[event_type, person.dateTime, auction.dateTime, bid.auction, bid.price, bid.dateTime])"
    );
    // `*` reads every column of what it reads: all of the bid view's, and so its
    // columns of the table, but no person's or auction's but their times.
    let bids = explain("SELECT * FROM bid");
    assert_eq!(
        bids,
        "fields=[event_type, person.dateTime, auction.dateTime, bid.auction, bid.bidder, bid.price, bid.channel, bid.url, bid.dateTime, bid.extra])"
    );
    let all = explain("SELECT * FROM nexmark");
    assert!(
        all.contains("person.name") && all.contains("auction.itemName"),
        "{all}"
    );
    // A view that selects * reads every column of the view it reads.
    let ddl = format!("{}\nCREATE VIEW b2 AS SELECT * FROM bid;", nexmark_ddl());
    let (rows, session) = run_with(&ddl, "SELECT auction, url FROM b2", 1);
    let want: Vec<Vec<Value>> = nexmark_bids(&session)
        .into_iter()
        .map(|b| vec![b[0].clone(), b[4].clone()])
        .collect();
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(sorted(got), sorted(want));
    // The statement's own `*` through that view: every column of the bid view.
    let (rows, session) = run_with(&ddl, "SELECT * FROM b2", 1);
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(sorted(got), sorted(nexmark_bids(&session)));
    // A union matches columns by position: its inputs are read whole (here the second
    // one's first column is the price).
    let ddl = format!(
        "{}\nCREATE VIEW v1 AS SELECT auction, price FROM bid;\n\
         CREATE VIEW v2 AS SELECT price, auction FROM bid;\n\
         CREATE VIEW u AS SELECT * FROM v1 UNION ALL SELECT * FROM v2;",
        nexmark_ddl()
    );
    let (rows, session) = run_with(&ddl, "SELECT auction FROM u", 1);
    let bids = nexmark_bids(&session);
    let want: Vec<Vec<Value>> = bids
        .iter()
        .map(|b| vec![b[0].clone()])
        .chain(bids.iter().map(|b| vec![b[2].clone()]))
        .collect();
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(sorted(got), sorted(want));
    // Pruned: the same bids, in the columns read.
    let (rows, session) = run_with(&nexmark_ddl(), "SELECT price, extra FROM bid", 1);
    let want: Vec<Vec<Value>> = nexmark_bids(&session)
        .into_iter()
        .map(|b| vec![b[2].clone(), b[6].clone()])
        .collect();
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(sorted(got), sorted(want));
}

#[test]
fn nexmark_stateless_queries_equal_the_reference() {
    spate::sql::nexmark::register_functions();
    for p in [1, 2] {
        let ddl = nexmark_ddl();
        // q0: every bid, as it is.
        let (rows, session) = run_with(&ddl, &nexmark_select("q0"), p);
        let bids = nexmark_bids(&session);
        assert_eq!(bids.len() as u64, NEXMARK_EVENTS / 50 * 46);
        let want: Vec<Vec<Value>> = bids
            .iter()
            .map(|b| {
                vec![
                    b[0].clone(),
                    b[1].clone(),
                    b[2].clone(),
                    b[5].clone(),
                    b[6].clone(),
                ]
            })
            .collect();
        let got = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q0 p={p}");
        // q1: prices in euros.
        let (rows, _) = run_with(&ddl, &nexmark_select("q1"), p);
        let want: Vec<Vec<Value>> = bids
            .iter()
            .map(|b| {
                let euros = 0.908 * int(&b[2]) as f64;
                vec![
                    b[0].clone(),
                    b[1].clone(),
                    Value::Double(euros),
                    b[5].clone(),
                    b[6].clone(),
                ]
            })
            .collect();
        let got = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q1 p={p}");
        // q2: the bids on auctions whose id is a multiple of 123.
        let (rows, _) = run_with(&ddl, &nexmark_select("q2"), p);
        let want: Vec<Vec<Value>> = bids
            .iter()
            .filter(|b| int(&b[0]) % 123 == 0)
            .map(|b| vec![b[0].clone(), b[2].clone()])
            .collect();
        assert!(!want.is_empty());
        let got = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q2 p={p}");
        // q14: a price band, the time of day, and the user function.
        let (rows, _) = run_with(&ddl, &nexmark_select("q14"), p);
        let want: Vec<Vec<Value>> = bids
            .iter()
            .filter(|b| {
                let e = 0.908 * int(&b[2]) as f64;
                e > 1_000_000.0 && e < 50_000_000.0
            })
            .map(|b| {
                let hour = int(&b[5]).div_euclid(3_600_000).rem_euclid(24);
                let band = if (8..=18).contains(&hour) {
                    "dayTime"
                } else if hour <= 6 || hour >= 20 {
                    "nightTime"
                } else {
                    "otherTime"
                };
                let extra = text_of(&b[6]);
                vec![
                    b[0].clone(),
                    b[1].clone(),
                    Value::Double(0.908 * int(&b[2]) as f64),
                    Value::Str(band.into()),
                    b[5].clone(),
                    b[6].clone(),
                    Value::Int(extra.matches('c').count() as i64),
                ]
            })
            .collect();
        assert!(!want.is_empty());
        let got = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q14 p={p}");
        // q21: the channel id from the name, else from the URL.
        let (rows, _) = run_with(&ddl, &nexmark_select("q21"), p);
        let want: Vec<Vec<Value>> = bids
            .iter()
            .filter_map(|b| {
                let channel = text_of(&b[3]);
                let url = text_of(&b[4]);
                let from_url = url
                    .split(['&', '?'])
                    .find_map(|kv| kv.strip_prefix("channel_id="))
                    .map(String::from);
                let id = match channel.to_lowercase().as_str() {
                    "apple" => Some("0".to_string()),
                    "google" => Some("1".to_string()),
                    "facebook" => Some("2".to_string()),
                    "baidu" => Some("3".to_string()),
                    _ => from_url,
                }?;
                Some(vec![
                    b[0].clone(),
                    b[1].clone(),
                    b[2].clone(),
                    b[3].clone(),
                    Value::Str(id.into()),
                ])
            })
            .collect();
        assert!(want.len() > bids.len() / 2);
        let got = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q21 p={p}");
        // q22: URL directories.
        let (rows, _) = run_with(&ddl, &nexmark_select("q22"), p);
        let want: Vec<Vec<Value>> = bids
            .iter()
            .map(|b| {
                let url = text_of(&b[4]);
                let parts: Vec<&str> = url.split('/').collect();
                let dir = |i: usize| {
                    parts
                        .get(i)
                        .map_or(Value::Null, |s| Value::Str((*s).into()))
                };
                vec![
                    b[0].clone(),
                    b[1].clone(),
                    b[2].clone(),
                    b[3].clone(),
                    dir(3),
                    dir(4),
                    dir(5),
                ]
            })
            .collect();
        let got = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q22 p={p}");
    }
}

#[test]
fn nexmark_aggregating_queries_end_at_the_reference() {
    for p in [1, 2] {
        let ddl = nexmark_ddl();
        let (rows, session) = run_with(&ddl, &nexmark_select("q17"), p);
        let bids = nexmark_bids(&session);
        let day = |b: &[Value]| {
            let ms = int(&b[5]);
            if ms < 1_704_153_600_000 {
                "2024-01-01"
            } else {
                "2024-01-02"
            }
        };
        // q17: per auction and day.
        type Stats = (i64, i64, i64, i64, i64, i64, i64);
        let mut want: HashMap<(i64, &str), Stats> = HashMap::new();
        for b in &bids {
            let price = int(&b[2]);
            let e = want
                .entry((int(&b[0]), day(b)))
                .or_insert((0, 0, 0, 0, i64::MAX, i64::MIN, 0));
            e.0 += 1;
            e.1 += i64::from(price < 10_000);
            e.2 += i64::from((10_000..1_000_000).contains(&price));
            e.3 += i64::from(price >= 1_000_000);
            e.4 = e.4.min(price);
            e.5 = e.5.max(price);
            e.6 += price;
        }
        let got = apply(&rows, 2);
        assert_eq!(got.len(), want.len(), "q17 p={p}");
        assert!(
            want.keys().any(|k| k.1 == "2024-01-02"),
            "the day changes midway"
        );
        for ((auction, d), (n, r1, r2, r3, min, max, sum)) in want {
            let k = vec![Value::Int(auction), Value::Str(d.into())];
            let expect: Vec<Value> = [auction, 0, n, r1, r2, r3, min, max, sum / n, sum]
                .iter()
                .map(|v| Value::Int(*v))
                .collect();
            let mut expect = expect;
            expect[1] = Value::Str(d.into());
            assert_eq!(got[&k], expect, "q17 p={p}");
        }
        // q15: per day, distinct bidders and auctions at each price level.
        let (rows, _) = run_with(&ddl, &nexmark_select("q15"), p);
        let got = apply(&rows, 1);
        assert_eq!(got.len(), 2, "q15 p={p}");
        for d in ["2024-01-01", "2024-01-02"] {
            let of_day: Vec<&Vec<Value>> = bids.iter().filter(|b| day(b) == d).collect();
            let level = |b: &Vec<Value>, l: usize| {
                let p = int(&b[2]);
                match l {
                    0 => true,
                    1 => p < 10_000,
                    2 => (10_000..1_000_000).contains(&p),
                    _ => p >= 1_000_000,
                }
            };
            let mut expect = vec![Value::Str(d.into())];
            for l in 0..4 {
                expect.push(Value::Int(
                    of_day.iter().filter(|b| level(b, l)).count() as i64
                ));
            }
            for col in [1, 0] {
                for l in 0..4 {
                    let distinct: HashSet<i64> = of_day
                        .iter()
                        .filter(|b| level(b, l))
                        .map(|b| int(&b[col]))
                        .collect();
                    expect.push(Value::Int(distinct.len() as i64));
                }
            }
            assert_eq!(got[&vec![Value::Str(d.into())]], expect, "q15 p={p}");
        }
    }
}

#[test]
fn nexmark_aggregates_and_top_n_of_joins_end_at_the_reference() {
    const AUCTION: [&str; 10] = [
        "auction.id",
        "auction.itemName",
        "auction.description",
        "auction.initialBid",
        "auction.reserve",
        "auction.dateTime",
        "auction.expires",
        "auction.seller",
        "auction.category",
        "auction.extra",
    ];
    for p in [1, 2] {
        let ddl = nexmark_ddl();
        // q4: per category, the average of its auctions' highest bids in their
        // lifetimes (an aggregate of an aggregate's changelog).
        let (rows, session) = run_with(&ddl, &nexmark_select("q4"), p);
        let auctions = nexmark_events(&session, 1, &AUCTION);
        let bids = nexmark_bids(&session);
        let mut by_auction: HashMap<i64, Vec<&Vec<Value>>> = HashMap::new();
        for b in &bids {
            by_auction.entry(int(&b[0])).or_default().push(b);
        }
        // Each auction's winning bid: the highest, the earliest of equal ones.
        let mut winners: Vec<(&Vec<Value>, &Vec<Value>)> = Vec::new();
        for a in &auctions {
            let (start, end) = (int(&a[5]), int(&a[6]));
            let best = by_auction
                .get(&int(&a[0]))
                .into_iter()
                .flatten()
                .filter(|b| (start..=end).contains(&int(&b[5])))
                .min_by_key(|b| (-int(&b[2]), int(&b[5])));
            if let Some(b) = best {
                winners.push((a, b));
            }
        }
        assert!(winners.len() > 10, "{}", winners.len());
        let mut per_category: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for (a, b) in &winners {
            let e = per_category.entry(int(&a[8])).or_default();
            e.0 += int(&b[2]);
            e.1 += 1;
        }
        let got = apply(&rows, 1);
        let want: HashMap<Vec<Value>, Vec<Value>> = per_category
            .into_iter()
            .map(|(c, (sum, n))| {
                (
                    vec![Value::Int(c)],
                    vec![Value::Int(c), Value::Int(sum / n)],
                )
            })
            .collect();
        assert!(rows.iter().any(|r| r.kind == RowKind::UpdateBefore));
        assert_eq!(got, want, "q4 p={p}");
        // q9: each auction with its winning bid.
        let (rows, _) = run_with(&ddl, &nexmark_select("q9"), p);
        let got = apply(&rows, 1);
        let want: HashMap<Vec<Value>, Vec<Value>> = winners
            .iter()
            .map(|(a, b)| {
                let mut row = a.to_vec();
                row.extend([&b[0], &b[1], &b[2], &b[5], &b[6]].map(|v| v.clone()));
                (vec![a[0].clone()], row)
            })
            .collect();
        assert_eq!(got, want, "q9 p={p}");
    }
}

#[test]
fn nexmark_partitioned_file_sink_equals_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q10");
    let script = nexmark_script("q10")
        .replace("'nexmark-output/q10'", &format!("'{}'", out.display()))
        .replace(
            "SELECT auction,",
            "INSERT INTO discard_sink SELECT auction,",
        );
    let mut spec = JobSpec::new("sql");
    spec.args = vec![nexmark_ddl(), script.clone()];
    spec.parallelism = Some(2);
    execute(&spec.job_graph(1, true).unwrap());
    // Directories per day and minute (':' escaped, as Flink writes it).
    let minutes: Vec<String> = std::fs::read_dir(out.join("dt=2024-01-01"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(minutes.iter().any(|m| m == "hm=23%3A59"), "{minutes:?}");
    // Read back through the same table: the partition columns come from the paths.
    let ddl = script.split("INSERT INTO").next().unwrap().to_string();
    let (rows, session) = run_with(
        &format!("{}\n{ddl}", nexmark_ddl()),
        "SELECT * FROM discard_sink;",
        2,
    );
    let want: Vec<Vec<Value>> = nexmark_bids(&session)
        .into_iter()
        .map(|b| {
            let ms = int(&b[5]);
            let t = spate::sql::types::format_timestamp(ms);
            vec![
                b[0].clone(),
                b[1].clone(),
                b[2].clone(),
                b[5].clone(),
                b[6].clone(),
                Value::Str(t[..10].into()),
                Value::Str(t[11..16].into()),
            ]
        })
        .collect();
    assert!(want.iter().any(|r| r[5] == Value::Str("2024-01-02".into())));
    let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(sorted(got), sorted(want));
}

#[test]
fn nexmark_lookup_join_equals_the_reference() {
    let side = concat!(env!("CARGO_MANIFEST_DIR"), "/../nexmark/side_input.txt");
    for p in [1, 2] {
        let script =
            nexmark_script("q13").replace("'nexmark/side_input.txt'", &format!("'{side}'"));
        let (rows, session) = run_with(&nexmark_ddl(), &script, p);
        // q13: every bid, with the side input's value for its auction mod 10000.
        let want: Vec<Vec<Value>> = nexmark_bids(&session)
            .into_iter()
            .map(|b| {
                let v = (int(&b[0]) % 10_000).to_string();
                vec![
                    b[0].clone(),
                    b[1].clone(),
                    b[2].clone(),
                    b[5].clone(),
                    Value::Str(v.into()),
                ]
            })
            .collect();
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q13 p={p}");
    }
}

#[test]
fn nexmark_window_joins_and_window_aggregates_of_windows_equal_the_reference() {
    for p in [1, 2] {
        let ddl = nexmark_ddl();
        // q5: per sliding window (10 s, every 2 s), the auctions with the most bids.
        let (rows, session) = run_with(&ddl, &nexmark_select("q5"), p);
        let bids = nexmark_bids(&session);
        let mut counts: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        for b in &bids {
            let ts = int(&b[5]);
            let mut s = ts - ts.rem_euclid(2000);
            while s > ts - 10_000 {
                *counts.entry((s, int(&b[0]))).or_default() += 1;
                s -= 2000;
            }
        }
        let mut most: BTreeMap<i64, i64> = BTreeMap::new();
        for ((s, _), n) in &counts {
            let m = most.entry(*s).or_default();
            *m = (*m).max(*n);
        }
        let want: Vec<Vec<Value>> = counts
            .iter()
            .filter(|((s, _), n)| **n >= most[s])
            .map(|((_, a), n)| vec![Value::Int(*a), Value::Int(*n)])
            .collect();
        assert!(want.len() >= most.len(), "{}", want.len());
        assert!(rows.iter().all(|r| r.kind == RowKind::Insert));
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q5 p={p}");
        // q7: the bids at a 10-second window's highest price, within the window
        // (its end included).
        let (rows, _) = run_with(&ddl, &nexmark_select("q7"), p);
        let mut highest: BTreeMap<i64, i64> = BTreeMap::new();
        for b in &bids {
            let ts = int(&b[5]);
            let end = ts - ts.rem_euclid(10_000) + 10_000;
            let m = highest.entry(end).or_insert(i64::MIN);
            *m = (*m).max(int(&b[2]));
        }
        let mut want = Vec::new();
        for (end, price) in &highest {
            for b in bids
                .iter()
                .filter(|b| int(&b[2]) == *price && (end - 10_000..=*end).contains(&int(&b[5])))
            {
                want.push(vec![
                    b[0].clone(),
                    b[2].clone(),
                    b[1].clone(),
                    b[5].clone(),
                    b[6].clone(),
                ]);
            }
        }
        assert!(want.len() >= highest.len(), "{}", want.len());
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q7 p={p}");
        // q8: people who opened an auction in the 10-second window they joined in.
        let (rows, session) = run_with(&ddl, &nexmark_select("q8"), p);
        let window = |ts: i64| ts - ts.rem_euclid(10_000);
        let sellers: HashSet<(i64, i64)> =
            nexmark_events(&session, 1, &["auction.seller", "auction.dateTime"])
                .iter()
                .map(|a| (int(&a[0]), window(int(&a[1]))))
                .collect();
        let people: HashSet<Vec<Value>> = nexmark_events(
            &session,
            0,
            &["person.id", "person.name", "person.dateTime"],
        )
        .into_iter()
        .map(|p| vec![p[0].clone(), p[1].clone(), Value::Ts(window(int(&p[2])))])
        .collect();
        let want: Vec<Vec<Value>> = people
            .into_iter()
            .filter(|p| sellers.contains(&(int(&p[0]), int(&p[2]))))
            .collect();
        assert!(want.len() > 5, "{}", want.len());
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q8 p={p}");
    }
}

/// A query file as a script: its statements, the INSERT's SELECT run as a query.
fn nexmark_script(q: &str) -> String {
    std::fs::read_to_string(format!("{}/../nexmark/{q}.sql", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .replace("INSERT INTO discard_sink", "")
}

#[test]
fn nexmark_session_and_processing_time_windows_equal_the_reference() {
    for p in [1, 2] {
        let ddl = nexmark_ddl();
        // q11: per bidder, sessions with a 10-second gap.
        let (rows, session) = run_with(&ddl, &nexmark_script("q11"), p);
        let bids = nexmark_bids(&session);
        let keyed: Vec<(i64, i64)> = bids.iter().map(|b| (int(&b[1]), int(&b[5]))).collect();
        let want: Vec<Vec<Value>> = sessions(&keyed, 10_000)
            .into_iter()
            .map(|(bidder, s, e, members)| {
                vec![
                    Value::Int(bidder),
                    Value::Int(members.len() as i64),
                    Value::Ts(s),
                    Value::Ts(e),
                ]
            })
            .collect();
        assert!(want.len() > 10, "{}", want.len());
        assert!(rows.iter().all(|r| r.kind == RowKind::Insert));
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q11 p={p}");
        // q12: per bidder, tumbling windows of 10 s on the wall clock. Which window a
        // bid falls in depends on when it ran; each bidder's counts add up to its
        // bids, in aligned windows of 10 s, each once.
        let before = spate::sql::expr::now_ms();
        let (rows, _) = run_with(&ddl, &nexmark_script("q12"), p);
        let after = spate::sql::expr::now_ms();
        let mut per_bidder: HashMap<i64, i64> = HashMap::new();
        let mut seen = HashSet::new();
        for r in &rows {
            assert_eq!(r.kind, RowKind::Insert);
            let (bidder, n, s, e) = (
                int(&r.values[0]),
                int(&r.values[1]),
                int(&r.values[2]),
                int(&r.values[3]),
            );
            assert_eq!((s % 10_000, e - s), (0, 10_000), "{r:?}");
            assert!(
                s <= after && e > before - 10_000,
                "{r:?} ran in [{before}, {after}]"
            );
            assert!(seen.insert((bidder, s)), "{r:?} twice");
            *per_bidder.entry(bidder).or_default() += n;
        }
        let mut want: HashMap<i64, i64> = HashMap::new();
        for b in &bids {
            *want.entry(int(&b[1])).or_default() += 1;
        }
        assert_eq!(per_bidder, want, "q12 p={p}");
    }
}

// ---------------------------------------------------------------------------------
// The Table API

#[test]
fn the_table_api_plans_as_sql_does_and_converts_to_and_from_streams() {
    use spate::sql::table::{col, count_star, lit, TableEnvironment};
    use spate::sql::types::DataType;
    use spate::sql::Column;
    for p in [1, 2] {
        let env = StreamExecutionEnvironment::new("table api");
        env.set_parallelism(p);
        let tenv = TableEnvironment::create(&env);
        tenv.execute_sql(&ddl()).unwrap();
        // A filter, then a grouped aggregate.
        let per_auction = tenv
            .from_path("bids")
            .filter(col("price").gt(lit(500)))
            .group_by(&[col("auction")])
            .select(&[
                col("auction"),
                count_star().as_("n"),
                col("price").sum().as_("total"),
            ]);
        assert_eq!(
            per_auction
                .schema()
                .unwrap()
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["auction", "n", "total"]
        );
        assert!(per_auction
            .explain()
            .unwrap()
            .starts_with("GroupAggregate("));
        let grouped = Arc::new(Mutex::new(Vec::new()));
        per_auction
            .to_changelog_stream()
            .unwrap()
            .collect(grouped.clone());
        assert!(per_auction.to_data_stream().is_err(), "it updates");
        // A tumbling window, through a DataStream and back: the window's rows become
        // a stream, which a second table reads.
        let windows = tenv
            .from_path("bids")
            .tumble("ts", Duration::from_secs(1))
            .unwrap()
            .group_by(&[col("window_start"), col("window_end"), col("auction")])
            .select(&[col("window_start"), col("auction"), count_star().as_("n")]);
        let stream = windows.to_data_stream().unwrap();
        let again = tenv
            .from_data_stream(
                &stream,
                &[
                    Column::new("ws", DataType::Timestamp),
                    Column::new("auction", DataType::BigInt),
                    Column::new("n", DataType::BigInt),
                ],
                None,
            )
            .unwrap()
            .filter(col("n").ge(lit(1)))
            .select(&[col("ws"), col("auction"), col("n")]);
        // A stream registered as a table describes (and drops) as a table does.
        let name = tenv
            .list_tables()
            .into_iter()
            .find(|n| n.starts_with("_stream_"))
            .unwrap();
        tenv.execute_sql(&format!("DESCRIBE \"{name}\"")).unwrap();
        let windowed = Arc::new(Mutex::new(Vec::new()));
        again.to_data_stream().unwrap().collect(windowed.clone());
        run_env(&env);

        // The same as SQL text gives the same rows.
        let (sql_grouped, session) = run_query(
            "SELECT auction, COUNT(*) AS n, SUM(price) AS total FROM bids WHERE price > 500 GROUP BY auction;",
            p,
        );
        let finals = |rows: &[Row]| {
            let mut t: HashMap<Value, Vec<Value>> = HashMap::new();
            for r in rows {
                match r.kind {
                    RowKind::Insert | RowKind::UpdateAfter => {
                        t.insert(r.values[0].clone(), r.values.clone());
                    }
                    _ => {}
                }
            }
            t
        };
        let got = finals(&grouped.lock().unwrap());
        assert_eq!(got, finals(&sql_grouped), "parallelism {p}");
        let mut want: HashMap<Value, (i64, i64)> = HashMap::new();
        for r in reference_rows(&session)
            .iter()
            .filter(|r| int(&r.values[1]) > 500)
        {
            let e = want.entry(r.values[0].clone()).or_default();
            e.0 += 1;
            e.1 += int(&r.values[1]);
        }
        assert_eq!(got.len(), want.len());
        for (k, (n, total)) in want {
            assert_eq!(got[&k], vec![k.clone(), Value::Int(n), Value::Int(total)]);
        }
        let (sql_windows, _) = run_query(
            "SELECT window_start, auction, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '1' SECOND)) GROUP BY window_start, window_end, auction;",
            p,
        );
        let got: Vec<Vec<Value>> = windowed
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.values.clone())
            .collect();
        let want: Vec<Vec<Value>> = sql_windows.into_iter().map(|r| r.values).collect();
        assert!(!want.is_empty());
        assert_eq!(sorted(got), sorted(want), "parallelism {p}");
    }
}

/// Rows of one kind of event, with the named columns of the `nexmark` table.
fn nexmark_events(session: &Session, kind: u8, cols: &[&str]) -> Vec<Vec<Value>> {
    let table = &session.catalog.tables["nexmark"];
    let gen = spate::sql::nexmark::Nexmark::from_table(table).unwrap();
    let idx: Vec<usize> = cols
        .iter()
        .map(|n| table.physical.iter().position(|c| c.name == *n).unwrap())
        .collect();
    (0..NEXMARK_EVENTS)
        .filter(|n| gen.kind(*n) == kind)
        .map(|n| {
            let r = gen.row(n, 0);
            idx.iter().map(|&i| r.values[i].clone()).collect()
        })
        .collect()
}

#[test]
fn nexmark_joins_equal_the_reference() {
    for p in [1, 2] {
        let ddl = nexmark_ddl();
        // q3: sellers in OR, ID or CA of category-10 auctions.
        let (rows, session) = run_with(&ddl, &nexmark_select("q3"), p);
        let people = nexmark_events(
            &session,
            0,
            &["person.id", "person.name", "person.city", "person.state"],
        );
        let auctions = nexmark_events(
            &session,
            1,
            &["auction.id", "auction.seller", "auction.category"],
        );
        let mut want = Vec::new();
        for a in auctions.iter().filter(|a| int(&a[2]) == 10) {
            for p in people
                .iter()
                .filter(|p| p[0] == a[1] && ["OR", "ID", "CA"].contains(&text_of(&p[3]).as_str()))
            {
                want.push(vec![p[1].clone(), p[2].clone(), p[3].clone(), a[0].clone()]);
            }
        }
        assert!(!want.is_empty(), "q3 joins something");
        let got = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q3 p={p}");
        // q20: bids with their category-10 auctions.
        let (rows, _) = run_with(&ddl, &nexmark_select("q20"), p);
        let bids = nexmark_bids(&session);
        let auctions = nexmark_events(
            &session,
            1,
            &[
                "auction.id",
                "auction.itemName",
                "auction.description",
                "auction.initialBid",
                "auction.reserve",
                "auction.dateTime",
                "auction.expires",
                "auction.seller",
                "auction.category",
                "auction.extra",
            ],
        );
        let mut want = Vec::new();
        for a in auctions.iter().filter(|a| int(&a[8]) == 10) {
            for b in bids.iter().filter(|b| b[0] == a[0]) {
                let mut row = b.clone();
                row.extend(a[1..].iter().cloned());
                want.push(row);
            }
        }
        assert!(!want.is_empty(), "q20 joins something");
        let got = rows.into_iter().map(|r| r.values).collect();
        assert_eq!(sorted(got), sorted(want), "q20 p={p}");
    }
}

#[test]
fn what_a_user_types_gives_errors_not_panics_and_right_results() {
    // Errors, not panics.
    for (sql, want) in [
        ("SELECT DISTINCT FROM bids;", "DISTINCT"),
        ("SELECT FROM bids;", "at least one column"),
        ("SELECT TIMESTAMP '99999999999999999-01-01 00:00:00' FROM bids;", ""),
        ("SELECT CAST('2024-01-01 -9223372036854775807:00' AS TIMESTAMP(3)) FROM bids;", "@none"),
        (
            "SELECT window_start, COUNT(*) FROM TABLE(HOP(TABLE bids, DESCRIPTOR(ts), INTERVAL '1' MILLISECOND, INTERVAL '1' DAY)) GROUP BY window_start, window_end;",
            "at most 10000",
        ),
        (
            "SELECT window_start, COUNT(*) FROM TABLE(HOP(TABLE bids, DESCRIPTOR(ts), INTERVAL '3' SECOND, INTERVAL '10' SECOND)) GROUP BY window_start, window_end;",
            "multiple of its slide",
        ),
        ("SELECT REGEXP(bidder, bidder) FROM bids;", "string literal"),
        ("DROP VIEW bids;", "is a table"),
        (
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price) AS rn FROM bids) WHERE price > 3;",
            "must bound it",
        ),
        (
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction) AS rn FROM bids) WHERE rn <= 3;",
            "needs ORDER BY",
        ),
        (
            "SELECT * FROM TABLE(SESSION(TABLE bids PARTITION BY, DESCRIPTOR(ts), INTERVAL '1' SECOND));",
            "PARTITION BY takes column names",
        ),
        (
            "SELECT * FROM TABLE(SESSION(TABLE bids PARTITION BY nope, DESCRIPTOR(ts), INTERVAL '1' SECOND));",
            "unknown column 'nope'",
        ),
        (
            "SELECT * FROM bids b JOIN bids FOR SYSTEM_TIME AS OF AS s ON b.auction = s.auction;",
            "needs a time",
        ),
        ("SELECT * FROM SYSTEM_TIME_AS_OF(bids, ts);", "joined with JOIN"),
        ("SELECT * FROM bids LIMIT 0;", "1 to 100000"),
        ("SELECT * FROM bids LIMIT 5 OFFSET 2;", "OFFSET"),
        ("SELECT * FROM bids ORDER BY ts DESC;", "event-time column, ascending"),
        ("SELECT TUMBLE_END(ts) FROM bids GROUP BY TUMBLE(ts);", "takes 1 interval"),
        ("SELECT COUNT(*) FROM bids GROUP BY TUMBLE(price, INTERVAL '1' SECOND);", "not a time attribute"),
        ("SELECT COUNT(*) FROM bids GROUP BY SESSION(ts, INTERVAL '0' SECOND);", "must be positive"),
        (
            "SELECT a.price FROM bids a, bids b WHERE a.ts BETWEEN b.ts + INTERVAL '1' SECOND AND b.ts - INTERVAL '1' SECOND AND a.auction = b.auction;",
            "bounds are empty",
        ),
        ("SELECT a.price FROM bids a, bids b;", "cross join"),
        (
            "CREATE TABLE p (a INT, b INT) PARTITIONED BY (a) WITH ('connector' = 'blackhole');",
            "PARTITIONED BY is for 'filesystem' tables",
        ),
        (
            "CREATE TABLE p (a INT, b INT) PARTITIONED BY (c) WITH ('connector' = 'filesystem', 'path' = '/tmp/x', 'format' = 'csv');",
            "no column 'c'",
        ),
        ("SET 'sql-client.execution.result-mode' = 'tables';", "not a result mode"),
        (
            "SELECT SUM(price) OVER (PARTITION BY auction ORDER BY price) FROM bids;",
            "ordered by a time attribute",
        ),
        (
            "SELECT SUM(price) OVER (ORDER BY ts), COUNT(*) OVER (PARTITION BY auction ORDER BY ts) FROM bids;",
            "different windows",
        ),
        (
            "SELECT SUM(price) OVER (ORDER BY ts ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) FROM bids;",
            "ends after CURRENT ROW",
        ),
        ("SELECT SUM(price) OVER w FROM bids;", "no window 'w'"),
        (
            "SELECT auction, SUM(price) OVER (ORDER BY ts) FROM bids GROUP BY auction;",
            "beside GROUP BY",
        ),
    ] {
        let env = StreamExecutionEnvironment::new("sql");
        let mut session = Session::new();
        let script = ddl() + "\n" + sql;
        let r = parse::script(&script).and_then(|statements| {
            statements
                .iter()
                .try_for_each(|s| session.execute(&env, s).map(|_| ()))
        });
        match (r, want) {
            // A CAST of a bad string is NULL at run time, not a planning error.
            (Ok(()), "@none") => {}
            (Err(e), w) => assert!(e.message.contains(w), "{sql}: {e}"),
            (Ok(()), _) => panic!("{sql}: no error"),
        }
    }
    // Computed columns read the physical row, whatever their order.
    let (rows, session) = run_with(
        "CREATE TABLE t (a AS b + 1, b BIGINT, c AS b * 2) WITH ('connector' = 'datagen', 'rows-per-second' = '0', 'number-of-rows' = '100', 'fields.b.kind' = 'sequence', 'fields.b.start' = '1', 'fields.b.end' = '100');",
        "SELECT a, b, c FROM t;",
        1,
    );
    assert!(session.catalog.tables.contains_key("t"));
    let mut got: Vec<(i64, i64, i64)> = rows
        .iter()
        .map(|r| (int(&r.values[0]), int(&r.values[1]), int(&r.values[2])))
        .collect();
    got.sort_unstable();
    let want: Vec<(i64, i64, i64)> = (1..=100).map(|b| (b + 1, b, b * 2)).collect();
    assert_eq!(got, want);
    // A self-join whose sides share column names: each qualified name is its side's.
    let (rows, session) = run_query(
        "SELECT b1.auction, b2.price, b2.auction FROM bids b1 JOIN bids b2 ON b2.price = b1.auction WHERE b1.price = 7;",
        2,
    );
    let all = reference_rows(&session);
    let mut want = Vec::new();
    for l in all.iter().filter(|r| int(&r.values[1]) == 7) {
        for r in all.iter().filter(|r| r.values[1] == l.values[0]) {
            want.push(vec![
                l.values[0].clone(),
                r.values[1].clone(),
                r.values[0].clone(),
            ]);
        }
    }
    assert!(!want.is_empty());
    let got = rows.into_iter().map(|r| r.values).collect();
    assert_eq!(sorted(got), sorted(want));
}

#[test]
fn nexmark_top_n_and_deduplication_end_at_the_reference() {
    for p in [1, 2] {
        let ddl = nexmark_ddl();
        // q18: the last bid of each bidder on each auction.
        let (rows, session) = run_with(&ddl, &nexmark_select("q18"), p);
        let bids = nexmark_bids(&session);
        let mut want: HashMap<Vec<Value>, Vec<Value>> = HashMap::new();
        for b in &bids {
            let key = vec![b[0].clone(), b[1].clone()];
            let newer = want.get(&key).is_none_or(|w| int(&w[5]) < int(&b[5]));
            if newer {
                want.insert(key, b.clone());
            }
        }
        let got = apply(&rows, 2);
        assert_eq!(got, want, "q18 p={p}");
        // q19: the ten highest prices of each auction, by rank.
        let (rows, _) = run_with(&ddl, &nexmark_select("q19"), p);
        let mut table: HashMap<(Value, Value), Vec<Value>> = HashMap::new();
        for r in &rows {
            let k = (r.values[0].clone(), r.values[7].clone());
            match r.kind {
                RowKind::Insert | RowKind::UpdateAfter => {
                    assert!(table.insert(k, r.values.clone()).is_none(), "{r:?}")
                }
                RowKind::UpdateBefore | RowKind::Delete => {
                    assert_eq!(table.remove(&k).as_ref(), Some(&r.values), "{r:?}")
                }
            }
        }
        let mut prices: HashMap<Value, Vec<i64>> = HashMap::new();
        for b in &bids {
            prices.entry(b[0].clone()).or_default().push(int(&b[2]));
        }
        let mut n = 0;
        for (auction, mut ps) in prices {
            ps.sort_unstable_by(|a, b| b.cmp(a));
            for (i, price) in ps.iter().take(10).enumerate() {
                let row = &table[&(auction.clone(), Value::Int(i as i64 + 1))];
                assert_eq!(
                    int(&row[2]),
                    *price,
                    "q19 p={p} auction {auction:?} rank {}",
                    i + 1
                );
                n += 1;
            }
        }
        assert_eq!(table.len(), n, "q19 p={p}");
    }
}
