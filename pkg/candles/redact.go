package candles

import (
	"net/url"
)

// RedactURL returns u fit for logs, events and errors: user info becomes
// "redacted" and the values of query parameters are hidden (an exchange or
// webhook URL may carry an API key or a token there). A string that does not
// parse as a URL is replaced whole, since it cannot be checked.
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL redacted)"
	}
	if p.User != nil {
		p.User = url.User("redacted")
	}
	if p.RawQuery != "" {
		q := p.Query()
		for k := range q {
			q[k] = []string{"redacted"}
		}
		p.RawQuery = q.Encode()
	}
	return p.String()
}
