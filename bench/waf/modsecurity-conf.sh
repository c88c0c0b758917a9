#!/usr/bin/env bash
# Writes DIR/modsecurity.conf: libmodsecurity 3 with the OWASP CRS (Debian's modsecurity-crs)
# at paranoia level PL, anomaly scoring with CRS's default thresholds, request bodies (form,
# JSON, XML) inspected, responses not. Shared by bench/waf/modsecurity-nginx.sh and the
# `nginx-modsec` candidate of bench/side-by-side.sh.
#
#   bench/waf/modsecurity-conf.sh DIR [PL]
set -euo pipefail
dir=$1 pl=${2:-1}
if [[ ! -f /usr/lib/nginx/modules/ngx_http_modsecurity_module.so || ! -d /usr/share/modsecurity-crs ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-http-modsecurity modsecurity-crs >/dev/null
fi
cp /etc/nginx/unicode.mapping "$dir/"
# libmodsecurity has no IncludeOptional: CRS's files are included one by one.
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
echo "$dir/modsecurity.conf"
