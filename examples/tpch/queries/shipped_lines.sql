-- Line items with their net revenue; every other model builds on this view.
SELECT l_orderkey,
       l_returnflag,
       l_shipdate,
       l_quantity,
       l_extendedprice * (1 - l_discount) AS net_revenue
FROM lineitem
WHERE l_shipdate <= DATE '1998-09-02'
