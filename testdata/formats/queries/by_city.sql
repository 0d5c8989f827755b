SELECT city, COUNT(*) AS people, SUM(score) AS score, COUNT(score) AS scored, MAX(name) AS last_name FROM people GROUP BY city
