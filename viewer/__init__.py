"""Web app: HTTP API, authentication, worklists and the front end.

It talks to the rest of the center only through the database, the queue and
Orthanc; never to the gateway.
"""
