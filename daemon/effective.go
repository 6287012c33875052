package daemon

import (
	"net/url"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Problems flattens a Validate error into its problems, one per bad field
// (nil for nil).
func Problems(err error) []error {
	if err == nil {
		return nil
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range joined.Unwrap() {
			out = append(out, Problems(e)...)
		}
		return out
	}
	return []error{err}
}

// Redacted is what "REDACTED" replaces a secret with in Redact's output.
const Redacted = "REDACTED"

// Redact returns cfg with every secret replaced by Redacted: the admin
// and read tokens, the reservation secrets (current and previous), the gossip key, the passwords of the
// MySQL DSN and the AMQP URL, and the Redis passwords. Empty secrets stay
// empty (an operator needs to see that one is missing).
func Redact(cfg Config) Config {
	hide := func(s *string) {
		if *s != "" {
			*s = Redacted
		}
	}
	hide(&cfg.AdminToken)
	hide(&cfg.ReadToken)
	hide(&cfg.ReservationSecret)
	cfg.ReservationSecretPrevious = append(cfg.ReservationSecretPrevious[:0:0], cfg.ReservationSecretPrevious...)
	for i := range cfg.ReservationSecretPrevious {
		hide(&cfg.ReservationSecretPrevious[i])
	}
	hide(&cfg.GossipKey)
	hide(&cfg.ShardDefaults.Password)
	cfg.Shards = append(cfg.Shards[:0:0], cfg.Shards...)
	for i := range cfg.Shards {
		hide(&cfg.Shards[i].Password)
	}
	cfg.MySQLDSN = redactDSN(cfg.MySQLDSN)
	cfg.AMQPURL = redactURL(cfg.AMQPURL)
	return cfg
}

// redactDSN hides the password of a go-sql-driver/mysql DSN,
// "user:password@tcp(host:port)/db?params". The password may hold '@' and
// '/': the driver splits at the last '@' before the last '/'.
func redactDSN(dsn string) string {
	slash := strings.LastIndexByte(dsn, '/')
	if slash < 0 {
		return dsn
	}
	at := strings.LastIndexByte(dsn[:slash], '@')
	if at < 0 {
		return dsn
	}
	user, _, hasPass := strings.Cut(dsn[:at], ":")
	if !hasPass {
		return dsn
	}
	return user + ":" + Redacted + dsn[at:]
}

// redactURL hides the password of an amqp:// URL; a URL that does not
// parse is hidden whole (it may be all password).
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		if s == "" {
			return s
		}
		return Redacted
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), Redacted)
	}
	return u.String()
}

// EffectiveYAML is cfg (file, environment and defaults merged) as YAML,
// secrets redacted: what `stockd check-config` prints.
func EffectiveYAML(cfg Config) ([]byte, error) {
	return yaml.Marshal(Redact(cfg))
}
