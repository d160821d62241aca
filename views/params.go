package views

import (
	"strings"

	"github.com/taskhub/taskhub"
)

// ParseParams reads the create form's params field: key=value pairs separated by commas or
// new lines, such as "steps=40, step_ms=100". Blank input is no params. The page's script
// parses the same way (assets/src/format.ts).
func ParseParams(s string) (map[string]string, error) {
	var params map[string]string
	for _, pair := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' }) {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return nil, taskhub.Errorf(taskhub.Invalid, "params: write key=value pairs separated by commas, such as steps=40: got %q", pair)
		}
		if params == nil {
			params = map[string]string{}
		}
		params[k] = v
	}
	return params, nil
}
