-- Query 10: Log to File System. Every bid into a filesystem table partitioned by its
-- day and minute (directories dt=.../hm=...), committed with checkpoints. Flink's
-- text also sets partition-commit and rolling policies, which spate does not take:
-- parts are committed as each checkpoint completes (or at the end of input). The
-- path is relative to where the job runs.
CREATE TABLE discard_sink (
  auction  BIGINT,
  bidder  BIGINT,
  price  BIGINT,
  `dateTime`  TIMESTAMP(3),
  extra  VARCHAR,
  dt STRING,
  hm STRING
) PARTITIONED BY (dt, hm) WITH (
  'connector' = 'filesystem',
  'path' = 'nexmark-output/q10',
  'format' = 'csv'
);

INSERT INTO discard_sink
SELECT auction, bidder, price, `dateTime`, extra, DATE_FORMAT(`dateTime`, 'yyyy-MM-dd'), DATE_FORMAT(`dateTime`, 'HH:mm')
FROM bid;
