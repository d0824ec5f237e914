-- Workload 5, B: the raw psycopg call (prepared, same connection).
SELECT debit_credits(%(user_id)s, %(amount)s)
