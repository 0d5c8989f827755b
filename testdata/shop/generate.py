"""Generates the `shop` test pipeline's data and, independently of sluice, its expected results.

Run from this folder: `python3 generate.py`. Deterministic (fixed seed); the outputs are
committed, so tests do not need Python. Expected results are computed here in plain Python,
an engine independent of sluice and DataFusion.
"""
import csv, json, os, random
from collections import defaultdict
from decimal import Decimal, ROUND_HALF_UP

random.seed(20241128)
countries = ["DE", "FR", "NL", "US", "JP"]
products = ["apple", "pear", "plum", "fig", "kiwi", "lime"]
customers = [{"customer_id": i, "name": f"customer {i}", "country": countries[i % len(countries)]}
             for i in range(1, 41)]
os.makedirs("data/orders", exist_ok=True)
with open("data/customers.jsonl", "w") as f:
    for c in customers:
        f.write(json.dumps(c) + "\n")

days = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
orders = []
oid = 1000
for day in days:
    rows = []
    for _ in range(random.randint(40, 70)):
        oid += 1
        status = random.choices(["paid", "paid", "paid", "cancelled", "refunded"])[0]
        price = Decimal(random.randint(50, 5000)) / 100
        rows.append({"order_id": oid, "customer_id": random.randint(1, 40),
                     "product": random.choice(products), "quantity": random.randint(1, 9),
                     "unit_price": f"{price:.2f}", "status": status, "dt": day})
    os.makedirs(f"data/orders/dt={day}", exist_ok=True)
    with open(f"data/orders/dt={day}/orders.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "customer_id", "product", "quantity", "unit_price", "status"])
        for r in rows:
            w.writerow([r["order_id"], r["customer_id"], r["product"], r["quantity"],
                        r["unit_price"], r["status"]])
    orders += rows

paid = [r for r in orders if r["status"] == "paid"]
amount = lambda r: Decimal(r["unit_price"]) * r["quantity"]
os.makedirs("expected", exist_ok=True)

daily = defaultdict(lambda: [0, Decimal(0), 0])
for r in paid:
    d = daily[r["dt"]]
    d[0] += 1; d[1] += amount(r); d[2] += r["quantity"]
with open("expected/daily_revenue.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["order_date", "orders", "revenue", "items"])
    for day in sorted(daily):
        n, rev, items = daily[day]
        w.writerow([day, n, f"{rev:.2f}", items])

country_of = {c["customer_id"]: c["country"] for c in customers}
by_country = defaultdict(lambda: [0, Decimal(0)])
for r in paid:
    c = by_country[(country_of[r["customer_id"]], r["product"])]
    c[0] += 1; c[1] += amount(r)
with open("expected/revenue_by_country.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["country", "product", "orders", "revenue"])
    for (country, product) in sorted(by_country):
        n, rev = by_country[(country, product)]
        w.writerow([country, product, n, f"{rev:.2f}"])

with open("expected/counts.json", "w") as f:
    json.dump({"orders": len(orders), "paid": len(paid), "customers": len(customers)}, f, indent=1)
