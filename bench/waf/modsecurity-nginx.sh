#!/usr/bin/env bash
# The baseline WAF: nginx + libmodsecurity 3 + OWASP CRS (Debian's libnginx-mod-http-modsecurity
# and modsecurity-crs, its files included one by one: libmodsecurity has no IncludeOptional) in front of an nginx origin that answers 200, on 127.0.0.1:PORT, at CRS
# paranoia level PL (default 1), anomaly scoring with CRS's default thresholds (inbound 5).
# Runs in the foreground until killed; for bench/waf/evaluate.py and side-by-side CPU runs.
#
#   bench/waf/modsecurity-nginx.sh PORT [PL]
set -euo pipefail
port=$1 pl=${2:-1}
if [[ ! -f /usr/lib/nginx/modules/ngx_http_modsecurity_module.so || ! -d /usr/share/modsecurity-crs ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-http-modsecurity modsecurity-crs >/dev/null
fi
dir=$(mktemp -d /tmp/modsec-nginx.XXXXXX)
origin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cp /etc/nginx/unicode.mapping "$dir/"
cat > "$dir/modsecurity.conf" <<CONF
SecRuleEngine On
SecRequestBodyAccess On
SecRule REQUEST_HEADERS:Content-Type "(?:application(?:/soap\+|/)|text/)xml" "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "application/json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRequestBodyLimit 13107200
SecRequestBodyNoFilesLimit 131072
SecRequestBodyLimitAction Reject
SecRule REQBODY_ERROR "!@eq 0" "id:200002,phase:2,t:none,log,deny,status:400,msg:'Failed to parse request body.'"
SecPcreMatchLimit 1000
SecPcreMatchLimitRecursion 1000
SecResponseBodyAccess Off
SecTmpDir $dir/
SecDataDir $dir/
SecAuditEngine Off
SecArgumentSeparator &
SecCookieFormat 0
SecUnicodeMapFile $dir/unicode.mapping 20127
SecStatusEngine Off
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level=$pl"
Include /etc/modsecurity/crs/crs-setup.conf
Include /etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf
Include /usr/share/modsecurity-crs/rules/*.conf
Include /etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf
CONF
cat > "$dir/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 64k;
  upstream origin { server 127.0.0.1:$origin; keepalive 64; }
  server {
    listen 127.0.0.1:$origin;
    location / { return 200 "hello"; }
  }
  server {
    listen 127.0.0.1:$port;
    modsecurity on;
    modsecurity_rules_file $dir/modsecurity.conf;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
trap 'rm -rf "$dir"' EXIT
exec nginx -c "$dir/nginx.conf"
