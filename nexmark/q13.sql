-- Query 13: Bounded Side Input Join. Each bid with the side input's value for its
-- auction: a lookup join, as of processing time, with a table read from a file
-- (nexmark/side_input.txt: the rows i,i for i < 10000, as Nexmark's generator
-- writes them). Run from the repository's root, or set the path.
CREATE TABLE side_input (
  `key` BIGINT,
  `value` VARCHAR
) WITH (
  'connector' = 'filesystem',
  'path' = 'nexmark/side_input.txt',
  'format' = 'csv'
);

CREATE TABLE discard_sink (
  auction  BIGINT,
  bidder  BIGINT,
  price  BIGINT,
  `dateTime`  TIMESTAMP(3),
  `value`  VARCHAR
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO discard_sink
SELECT
    B.auction,
    B.bidder,
    B.price,
    B.`dateTime`,
    S.`value`
FROM (SELECT *, PROCTIME() as p_time FROM bid) B
JOIN side_input FOR SYSTEM_TIME AS OF B.p_time AS S
ON mod(B.auction, 10000) = S.`key`;
