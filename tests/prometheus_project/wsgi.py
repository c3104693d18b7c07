from django.core.wsgi import get_wsgi_application
from django.db import connection

application = get_wsgi_application()

# Under gunicorn --preload this module is imported by the master only: one
# query there makes the master a process with a pool (and a server session,
# kept idle in it) when it forks, the case the workers' metrics must not
# count twice.
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
connection.close()
