'use client';

import dynamic from 'next/dynamic';
import { useState } from 'react';

// Its chunk is fetched only when the button is pressed.
const Panel = dynamic(() => import('./panel'), { ssr: false });

export default function LazyPanel() {
  const [open, setOpen] = useState(false);
  return (
    <div>
      <button id="open" onClick={() => setOpen(true)}>
        Open the panel
      </button>
      {open && <Panel />}
    </div>
  );
}
