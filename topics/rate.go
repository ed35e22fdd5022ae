package topics

import "math"

// rateTau is the time constant of the publish-rate average, in ms.
const rateTau = 10_000.0

// rate is an exponentially decaying event rate (events per second): each
// event adds 1/τ and the value decays by e^(−Δt/τ). It needs no timer.
type rate struct {
	v  float64 // events per ms, as of at
	at int64   // ms
}

func (r *rate) decay(now int64) {
	if now > r.at {
		r.v *= math.Exp(-float64(now-r.at) / rateTau)
		r.at = now
	}
}

func (r *rate) add(now int64) {
	r.decay(now)
	r.v += 1 / rateTau
}

// value returns events per second at now.
func (r *rate) value(now int64) float64 {
	c := *r
	c.decay(now)
	return math.Round(c.v*1000*100) / 100
}
