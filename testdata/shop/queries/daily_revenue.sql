SELECT order_date,
       COUNT(*) AS orders,
       SUM(amount) AS revenue,
       SUM(quantity) AS items
FROM paid_orders
GROUP BY order_date
