-- Paid orders with their amount; inlined into the models that read it.
SELECT order_id, customer_id, product, quantity, unit_price,
       CAST(quantity * unit_price AS DECIMAL(12, 2)) AS amount,
       dt AS order_date
FROM orders
WHERE status = 'paid'
