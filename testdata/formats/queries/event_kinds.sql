SELECT kind, COUNT(*) AS n, SUM(n) AS total FROM events GROUP BY kind
