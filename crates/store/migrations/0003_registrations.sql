-- Targets that services registered themselves (PUT /upstreams/{name}/targets/{address} with a
-- ttl), shared by every node of the store. A registration lives until expires_ms (Unix
-- milliseconds) unless a heartbeat moves it on.
CREATE TABLE registrations (
    upstream TEXT NOT NULL,
    address TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (upstream, address)
);
