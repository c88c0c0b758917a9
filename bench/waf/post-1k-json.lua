-- wrk: every request a POST of a 1 KiB JSON body of ordinary fields (clean traffic for the
-- WAF's CPU figures: names, text, numbers, a nested object).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local items = {}
for i = 1, 12 do
  items[#items + 1] = string.format('{"sku":"SKU-%04d","name":"Blue cotton t-shirt size M","qty":%d,"price":19.99}', i, i)
end
wrk.body = string.format('{"customer":{"name":"Anne O\'Brien","email":"anne@example.com"},"note":"Please deliver after 6pm, ring twice.","items":[%s]}', table.concat(items, ","))
