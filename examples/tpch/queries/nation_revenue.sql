SELECT n.n_name AS nation,
       o.o_orderpriority AS priority,
       COUNT(DISTINCT o.o_orderkey) AS orders,
       SUM(s.net_revenue) AS revenue
FROM shipped_lines s
JOIN orders o ON o.o_orderkey = s.l_orderkey
JOIN customer c ON c.c_custkey = o.o_custkey
JOIN nation n ON n.n_nationkey = c.c_nationkey
GROUP BY 1, 2
