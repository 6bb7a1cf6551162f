-- Query 4: Average Price for a Category. The average of each category's closing
-- prices: each auction's highest bid in its lifetime (a regular join of auctions and
-- bids), then an aggregate over that changelog.
CREATE TABLE discard_sink (
  id BIGINT,
  final BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO discard_sink
SELECT
    Q.category,
    AVG(Q.final)
FROM (
    SELECT MAX(B.price) AS final, A.category
    FROM auction A, bid B
    WHERE A.id = B.auction AND B.`dateTime` BETWEEN A.`dateTime` AND A.expires
    GROUP BY A.id, A.category
) Q
GROUP BY Q.category;