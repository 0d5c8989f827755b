SELECT c.c_custkey AS customer_key,
       c.c_name AS customer,
       SUM(s.net_revenue) AS revenue
FROM shipped_lines s
JOIN orders o ON o.o_orderkey = s.l_orderkey
JOIN customer c ON c.c_custkey = o.o_custkey
GROUP BY 1, 2
ORDER BY revenue DESC
LIMIT 100
