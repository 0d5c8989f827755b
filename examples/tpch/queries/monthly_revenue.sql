SELECT CAST(date_part('year', l_shipdate) AS INT) AS ship_year,
       CAST(date_part('month', l_shipdate) AS INT) AS ship_month,
       l_returnflag AS return_flag,
       COUNT(*) AS lines,
       SUM(l_quantity) AS quantity,
       SUM(net_revenue) AS revenue
FROM shipped_lines
GROUP BY 1, 2, 3
