'use client';

import { useState } from 'react';

export default function Counter({ start = 0 }) {
  const [n, setN] = useState(start);
  return (
    <div className="counter">
      <button onClick={() => setN(n - 1)}>-</button>
      <output>{n}</output>
      <button onClick={() => setN(n + 1)}>+</button>
    </div>
  );
}
