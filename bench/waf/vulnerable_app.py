#!/usr/bin/env python3
"""A deliberately vulnerable application for the WAF's sqlmap test: it builds SQL by pasting
request parameters into the query (SQLite, in memory), and shows database errors.

    bench/waf/vulnerable_app.py PORT

GET  /item?id=1            -> SELECT name, price FROM items WHERE id = <id>          (numeric)
GET  /search?q=shirt       -> ... WHERE name LIKE '%<q>%'                            (string)
POST /login (form user=..&pass=..) -> ... WHERE user = '<user>' AND pass = '<pass>'
Loopback only. Never expose it.
"""
import http.server, json, sqlite3, sys, urllib.parse

db = sqlite3.connect(":memory:", check_same_thread=False)
db.executescript("""
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL);
INSERT INTO items VALUES (1, 'Blue shirt', 19.99), (2, 'Red shirt', 21.5), (3, 'Green hat', 9.0);
CREATE TABLE users (user TEXT, pass TEXT, secret TEXT);
INSERT INTO users VALUES ('admin', 's3cret', 'the launch codes'), ('anne', 'pw', 'nothing');
""")


class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def query(self, sql):
        try:
            rows = db.execute(sql).fetchall()
            self.answer(200, {"rows": rows})
        except Exception as e:  # the leak sqlmap's error-based techniques feed on
            self.answer(500, {"error": str(e), "sql": sql})

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        if u.path == "/item":
            self.query("SELECT name, price FROM items WHERE id = " + q.get("id", "1"))
        elif u.path == "/search":
            self.query("SELECT name, price FROM items WHERE name LIKE '%" + q.get("q", "") + "%'")
        else:
            self.answer(200, {"ok": True})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode("utf-8", "replace")))
        if self.path == "/login":
            self.query("SELECT user FROM users WHERE user = '" + form.get("user", "")
                       + "' AND pass = '" + form.get("pass", "") + "'")
        else:
            self.answer(404, {"error": "no such page"})


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), App).serve_forever()
