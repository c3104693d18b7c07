"""Put first on ``sys.path`` to run Django's PostgreSQL backend on psycopg2.

Django picks psycopg 3 whenever it can be imported; this stands in its place.
"""

raise ImportError("psycopg 3 is hidden so that Django uses psycopg2")
