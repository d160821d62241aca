package views

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/a-h/templ"
)

// inertMarkup renders c as the text of a <script type="text/html"> element with the given id: a
// template the page's script parses and clones. Unlike a <template> element's content, no HTML
// parser takes it for elements of the page, so hooks such as data-testid="task-card" in it do
// not count as cards for tests that parse the page without running it.
func inertMarkup(id string, c templ.Component) templ.Component {
	return templ.ComponentFunc(func(ctx context.Context, w io.Writer) error {
		var b strings.Builder
		if err := c.Render(ctx, &b); err != nil {
			return err
		}
		if strings.Contains(strings.ToLower(b.String()), "</script") {
			return fmt.Errorf("template %s: markup would end its script element", id)
		}
		_, err := fmt.Fprintf(w, `<script type="text/html" id="%s">%s</script>`, id, b.String())
		return err
	})
}
