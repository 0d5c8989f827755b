SELECT c.country, p.product, COUNT(*) AS orders, SUM(p.amount) AS revenue
FROM paid_orders p
JOIN customers c ON c.customer_id = p.customer_id
GROUP BY c.country, p.product
