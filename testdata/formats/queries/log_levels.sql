SELECT level, COUNT(*) AS n, SUM(ms) AS ms FROM logs GROUP BY level
